"""ImageNet weights for torchvision models: given by path or found in torch's cache, never fetched.

Without weights a model keeps its seeded random initialisation, and the user is told once what
that means and how to get the file.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from gpulab.runtime.errors import GpulabError

_warned: set[str] = set()


def cached_weights_path(weights) -> Path:
    """Where torchvision keeps a weights enum's file once downloaded (torch hub's checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def load_pretrained(
    model: nn.Module,
    arch: str,
    weights,
    path: Path | None,
    option: str,
    prefix: str = "",
) -> tuple[bool, str]:
    """Load `weights` (a torchvision enum) into `model` from `path` or torch's cache.

    `prefix` restricts the check to keys under it (e.g. "features." when only the convolutional
    part is used). Returns (pretrained, where the weights came from).
    """
    file = Path(path) if path else cached_weights_path(weights)
    if path and not file.is_file():
        raise GpulabError(f"{option} {file}: no such file; pass a {arch} state dict (.pth)")
    if not file.is_file():
        _warn_once(arch, weights, file, option)
        return False, "random initialisation"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise GpulabError(f"{option} {file} is not a readable torch state dict ({e})") from None
    if not isinstance(state, dict) or not any(str(k).startswith(prefix) for k in state):
        raise GpulabError(f"{option} {file} holds no {arch} '{prefix}*' weights")
    if prefix:
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
    try:
        missing, _ = model.load_state_dict(state, strict=not prefix)
    except RuntimeError as e:
        raise GpulabError(f"{file} does not fit {arch} ({str(e).splitlines()[0]})") from None
    if prefix and any(k.startswith(prefix) for k in missing):
        raise GpulabError(f"{file} does not fit {arch} (missing {prefix}* weights)")
    return True, str(file)


def _warn_once(arch: str, weights, file: Path, option: str) -> None:
    if arch in _warned:
        return
    _warned.add(arch)
    builder = arch.lower()
    print(
        f"gpulab: {arch} ImageNet weights not found ({file}); using random weights, so the "
        "results will be poor. To get them, on a machine with internet run "
        f'`python -c "import torchvision; torchvision.models.{builder}'
        f"(weights='{weights.name}')\"` and copy the file to that path, or pass {option} PATH.",
        file=sys.stderr,
    )
