"""VGG19 ImageNet weights: from --vgg-weights, or torchvision's cache; never downloaded here."""

import sys
from pathlib import Path

import torch
import torchvision

from gpulab.runtime.errors import GpulabError
from gpulab.workloads.style.model import VGGFeatures

_warned = False


def cached_weights_path() -> Path:
    """Where torchvision keeps the VGG19 ImageNet weights once downloaded."""
    url = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise GpulabError(
            f"--vgg-weights {path} is not a readable torch state dict ({e})"
        ) from None
    if not isinstance(state, dict) or not any(k.startswith("features.") for k in state):
        raise GpulabError(f"--vgg-weights {path} holds no VGG19 'features.*' weights")
    return state


def load_vgg19(weights: Path | None = None, seed: int = 0) -> tuple[VGGFeatures, bool, str]:
    """(features, pretrained, where the weights came from). Without weights: random, said once."""
    vgg = torchvision.models.vgg19(weights=None)
    path = Path(weights) if weights else cached_weights_path()
    if weights and not path.is_file():
        raise GpulabError(f"--vgg-weights {path}: no such file; pass a VGG19 state dict (.pth)")
    if path.is_file():
        try:
            vgg.load_state_dict(_load_state(path), strict=False)
        except RuntimeError as e:
            raise GpulabError(f"{path} does not fit VGG19 ({str(e).splitlines()[0]})") from None
        return VGGFeatures(vgg.features), True, str(path)
    torch.manual_seed(seed)
    vgg = torchvision.models.vgg19(weights=None)
    _warn_once(path)
    return VGGFeatures(vgg.features), False, "random initialisation"


def _warn_once(path: Path) -> None:
    global _warned
    if not _warned:
        print(
            f"gpulab: VGG19 ImageNet weights not found ({path}); using random weights, so the "
            "result will look poor. To get them, on a machine with internet run "
            "`python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\"` "
            "and copy the file there, or pass --vgg-weights PATH.",
            file=sys.stderr,
        )
        _warned = True
