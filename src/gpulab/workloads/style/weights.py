"""VGG19 ImageNet weights: from --vgg-weights, or torchvision's cache; never downloaded here."""

from pathlib import Path

import torch
import torchvision

from gpulab.runtime.pretrained import load_pretrained
from gpulab.workloads.style.model import VGGFeatures


def load_vgg19(weights: Path | None = None, seed: int = 0) -> tuple[VGGFeatures, bool, str]:
    """(features, pretrained, where the weights came from). Without weights: seeded random."""
    torch.manual_seed(seed)
    vgg = torchvision.models.vgg19(weights=None)
    pretrained, source = load_pretrained(
        vgg,
        "VGG19",
        torchvision.models.VGG19_Weights.IMAGENET1K_V1,
        weights,
        "--vgg-weights",
        prefix="features.",
    )
    return VGGFeatures(vgg.features), pretrained, source
