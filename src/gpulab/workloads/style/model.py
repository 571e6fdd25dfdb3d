"""VGG19 features for style transfer, and the Gram matrix.

Layers (Gatys et al.): content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
The network stops after relu5_1; ReLUs are not in place (their inputs are kept for autograd).
Inputs are RGB in [0, 1], normalised here with the ImageNet mean and std the weights expect.
"""

import torch
from torch import nn

from gpulab.data.decode import IMAGENET_MEAN, IMAGENET_STD

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
    """(B, C, H, W) -> (B, C, C) Gram matrix divided by C*H*W: independent of image size.

    Always float32, also under autocast: a sum over H*W products loses too much in bf16, and
    Gram targets and Grams of the image being optimised must have the same dtype.
    """
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        f = features.reshape(b, c, h * w).float()
        return f @ f.transpose(1, 2) / (c * h * w)


class _ConvLayer(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, upsample: int = 1):
        layers: list[nn.Module] = (
            [nn.Upsample(scale_factor=upsample, mode="nearest")] if upsample > 1 else []
        )
        layers += [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, stride)]
        super().__init__(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _ConvLayer(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(),
            _ConvLayer(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformerNet(nn.Module):
    """Johnson et al.'s image-transformation network with instance norm (Ulyanov et al.).

    9x9 conv, two stride-2 downsampling convs, residual blocks, two nearest-upsampling convs,
    9x9 conv to RGB; a sigmoid keeps the output in [0, 1]. Any size whose sides are multiples of
    4 maps to the same size (`stylize_any_size` pads other sizes).
    """

    def __init__(self, width: int = 32, residual_blocks: int = 5):
        super().__init__()

        def block(c_in, c_out, kernel, stride=1, upsample=1):
            return [
                _ConvLayer(c_in, c_out, kernel, stride, upsample),
                nn.InstanceNorm2d(c_out, affine=True),
                nn.ReLU(),
            ]

        w = width
        self.net = nn.Sequential(
            *block(3, w, 9),
            *block(w, 2 * w, 3, stride=2),
            *block(2 * w, 4 * w, 3, stride=2),
            *[_Residual(4 * w) for _ in range(residual_blocks)],
            *block(4 * w, 2 * w, 3, upsample=2),
            *block(2 * w, w, 3, upsample=2),
            _ConvLayer(w, 3, 9),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image))


def stylize_any_size(model: TransformerNet, image: torch.Tensor) -> torch.Tensor:
    """Pad (reflect) to multiples of 4, transform, crop back to the input's size."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    padded = nn.functional.pad(image, (0, pw, 0, ph), mode="reflect") if ph or pw else image
    return model(padded)[..., :h, :w]
