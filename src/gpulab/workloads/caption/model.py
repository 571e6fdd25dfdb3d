"""Show and Tell, with the image embedding given to the LSTM at every step beside the word.

The encoder is a small CNN trained with the decoder, or a frozen torchvision backbone (VGG16's
fc7 as in the study, or a ResNet's pooled features) whose features are computed once; the
captioner then learns only a linear projection of them.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gpulab.data.decode import IMAGENET_MEAN, IMAGENET_STD
from gpulab.runtime.pretrained import load_pretrained

BACKBONES = {  # name: (builder, ImageNet weights, feature size)
    "vgg16": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1, 4096),
    "resnet18": (
        torchvision.models.resnet18,
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
        512,
    ),
    "resnet50": (
        torchvision.models.resnet50,
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        2048,
    ),
}
ENCODERS = ("small", *BACKBONES)


class Backbone(nn.Module):
    """A frozen torchvision CNN: uint8 pixels in, one feature vector per image out."""

    def __init__(self, trunk: nn.Module, dim: int):
        super().__init__()
        self.trunk, self.dim = trunk.eval().requires_grad_(False), dim
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(False)  # frozen: BatchNorm statistics and dropout never change

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk((pixels.float() / 255 - self.mean) / self.std)


def load_backbone(name: str, weights: Path | None, seed: int) -> tuple[Backbone, bool, str]:
    """(backbone, pretrained, where its weights came from); seeded random without weights."""
    build, imagenet, dim = BACKBONES[name]
    torch.manual_seed(seed)
    net = build(weights=None)
    arch = {"vgg16": "VGG16", "resnet18": "ResNet18", "resnet50": "ResNet50"}[name]
    pretrained, source = load_pretrained(net, arch, imagenet, weights, "--set encoder_weights")
    if name == "vgg16":
        net.classifier = net.classifier[:5]  # fc6, relu, dropout, fc7, relu: fc7 after its ReLU
    else:
        net.fc = nn.Identity()
    return Backbone(net, dim), pretrained, source


class SmallEncoder(nn.Module):
    """A CNN trained from scratch: four conv-BN-ReLU-pool stages, global average, linear."""

    def __init__(self, embed: int, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (width, 2 * width, 4 * width, 8 * width):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project = nn.Linear(c_in, embed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) pixels in."""
        return self.project(self.features(images.float() / 255))


class Captioner(nn.Module):
    """Inputs are images for the small encoder, or cached backbone features (feature_dim)."""

    def __init__(
        self,
        vocab_size: int,
        embed: int = 256,
        hidden: int = 256,
        width: int = 32,
        feature_dim: int | None = None,
    ):
        super().__init__()
        self.encoder = (
            SmallEncoder(embed, width) if feature_dim is None else nn.Linear(feature_dim, embed)
        )
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(2 * embed, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def _inputs(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Each step sees its word and the image: the image cannot fade from the state."""
        words = self.embed(tokens)
        return torch.cat([words, feats.unsqueeze(1).expand(-1, words.shape[1], -1)], dim=-1)

    def forward(self, inputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T-1, V) predicting tokens[:, 1:] from tokens[:, :-1]."""
        h, _ = self.lstm(self._inputs(self.encoder(inputs), tokens[:, :-1]))
        return self.out(h)

    def begin(self, inputs: torch.Tensor):
        """Decoding state before the first word: no LSTM state yet, and the image embedding."""
        return None, self.encoder(inputs)

    def next_logp(self, tokens: torch.Tensor, state):
        """Log-probabilities of the next word after `tokens` (B,), and the new state."""
        lstm_state, feats = state
        h, lstm_state = self.lstm(self._inputs(feats, tokens.unsqueeze(1)), lstm_state)
        return F.log_softmax(self.out(h[:, 0]).float(), dim=-1), (lstm_state, feats)


def select(state, keep: list[int]):
    """The decoding state of the beams in `keep`."""
    lstm_state, feats = state
    if lstm_state is not None:
        lstm_state = tuple(t[:, keep] for t in lstm_state)
    return lstm_state, feats[keep]


def caption_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over real tokens: padding (id 0) is masked out."""
    target = tokens[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=0
    )


@torch.no_grad()
def greedy(model: Captioner, images: torch.Tensor, start: int, end: int, max_words: int):
    """Most likely word at each step; returns token lists (without <start>) and their log-probs."""
    state = model.begin(images)
    token = torch.full((len(images),), start, dtype=torch.long, device=images.device)
    out = [[] for _ in images]
    logp_sum = torch.zeros(len(images), device=images.device)
    done = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    for _ in range(max_words + 1):
        logp, state = model.next_logp(token, state)
        best, token = logp.max(dim=-1)
        logp_sum += torch.where(done, torch.zeros_like(best), best)
        for i, (t, d) in enumerate(zip(token.tolist(), done.tolist())):
            if not d:
                out[i].append(t)
        done |= token == end
        if bool(done.all()):
            break
    return out, logp_sum.tolist()


@torch.no_grad()
def beam_search(
    model: Captioner, image: torch.Tensor, start: int, end: int, max_words: int, beam: int
):
    """Length-normalised beam search for one input (a batch of 1): (tokens, log-prob)."""
    state = model.begin(image)
    seqs, scores = [[]], torch.zeros(1, device=image.device)
    finished = []
    for _ in range(max_words + 1):
        last = torch.tensor([s[-1] if s else start for s in seqs], device=image.device)
        logp, state = model.next_logp(last, state)
        total = (scores[:, None] + logp).flatten()
        top, flat = total.topk(min(beam, total.numel()))
        alive, keep, new_scores = [], [], []
        for score, f in zip(top.tolist(), flat.tolist()):
            b, word = divmod(f, logp.shape[1])
            seq = seqs[b] + [word]
            if word == end:
                finished.append((seq, score))
            else:
                alive.append(seq)
                keep.append(b)
                new_scores.append(score)
        if len(finished) >= beam or not alive:
            break
        seqs, scores = alive, torch.tensor(new_scores, device=image.device)
        state = select(state, keep)
    finished = finished or list(zip(seqs, scores.tolist()))
    return max(finished, key=lambda f: f[1] / len(f[0]))
