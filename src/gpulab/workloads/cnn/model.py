"""The networks: torchvision's definitions, randomly initialised, in NHWC on request."""

import torch
import torchvision
from torch import nn


def build_cnn(name: str, classes: int) -> nn.Module:
    """One of config.MODELS from torchvision, random weights, `classes` outputs."""
    return getattr(torchvision.models, name)(weights=None, num_classes=classes)


def channels_last_for(cfg, device: torch.device) -> bool:
    """NHWC where asked, by default on CUDA (tensor-core convolutions prefer it)."""
    return device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
