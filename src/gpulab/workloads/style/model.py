"""VGG19 features for style transfer, and the Gram matrix.

Layers (Gatys et al.): content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
The network stops after relu5_1; ReLUs are not in place (their inputs are kept for autograd).
Inputs are RGB in [0, 1], normalised here with the ImageNet mean and std the weights expect.
"""

import torch
from torch import nn

# Index of each named output in torchvision's vgg19().features.
VGG19_LAYERS = {
    "relu1_1": 1,
    "relu2_1": 6,
    "relu3_1": 11,
    "relu4_1": 20,
    "relu4_2": 22,
    "relu5_1": 29,
}
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen VGG19 trunk returning the named activations style transfer uses."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        last = max(VGG19_LAYERS.values())
        layers = [
            nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m for m in features[: last + 1]
        ]
        self.layers = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.names = {index: name for name, index in VGG19_LAYERS.items()}
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        out = {}
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.names:
                out[self.names[index]] = x
        return out


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrix divided by C*H*W: independent of image size."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w).float()
    return f @ f.transpose(1, 2) / (c * h * w)
