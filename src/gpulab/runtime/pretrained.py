"""ImageNet weights for torchvision models: given by path, found in torch's cache, or fetched
into that cache on first use the way torchvision does (torch hub, the file's hash checked).

`--offline` / GPULAB_OFFLINE=1 never fetches. Without weights (offline, or a fetch that failed) a
model keeps its seeded random initialisation, and the user is told once what that means and how
to supply the file.
"""

import os
import re
import sys
from pathlib import Path

import torch
from torch import nn

from gpulab.runtime.errors import GpulabError, first_line

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
    if not file.is_file() and not fetch_weights(arch, weights, file, option):
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
        raise GpulabError(f"{file} does not fit {arch} ({first_line(e)})") from None
    if prefix and any(k.startswith(prefix) for k in missing):
        raise GpulabError(f"{file} does not fit {arch} (missing {prefix}* weights)")
    return True, str(file)


def offline() -> bool:
    """Whether gpulab may not fetch anything (`gpulab --offline`, GPULAB_OFFLINE=1)."""
    return os.environ.get("GPULAB_OFFLINE", "") not in ("", "0")


def fetch_weights(arch: str, weights, file: Path, option: str) -> bool:
    """Download `weights.url` to `file` in torch's cache, its SHA-256 prefix (the part of the file
    name after the last '-', as torchvision names them) checked; a progress bar on a terminal.
    False, with one line saying why and how to supply the file, where offline or where the fetch
    fails; torch writes to a temporary file and moves it only when complete and checked."""
    if offline():
        _warn_once(arch, f"not in torch's cache ({file}) and gpulab is offline", file, option)
        return False
    found = re.search(r"-([a-f0-9]{6,})\.", weights.url.rsplit("/", 1)[-1])
    file.parent.mkdir(parents=True, exist_ok=True)
    print(f"gpulab: fetching {arch} ImageNet weights from {weights.url} to {file}", file=sys.stderr)
    try:
        torch.hub.download_url_to_file(
            weights.url, str(file), hash_prefix=found.group(1) if found else None,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
    except (OSError, RuntimeError, ValueError) as e:  # no network, HTTP error, hash mismatch
        _warn_once(arch, f"could not be fetched from {weights.url} ({first_line(e)})", file, option)
        return False
    return True


def _warn_once(arch: str, why: str, file: Path, option: str) -> None:
    if arch in _warned:
        return
    _warned.add(arch)
    how = f"{option}=PATH" if option.startswith("--set ") else f"{option} PATH"
    print(
        f"gpulab: {arch} ImageNet weights {why}; using random weights, so the results will be "
        f"poor. Pass {how}, or put the file at {file}.",
        file=sys.stderr,
    )
