"""Backbone features computed once per image set and cached on disk.

The cache key covers the backbone, its weights, the image size and every image (its pixels when
held in memory; path, length and modification time for a file), so a changed image, size or
weights file never reuses stale features. Under torchrun each rank encodes its share of the
images and the shares are gathered, so every rank ends with all features.
"""

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as tdist

from gpulab.runtime.checkpoint import save_checkpoint
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.progress import ProgressBar
from gpulab.workloads.caption.model import Backbone

BATCH = 64


class ImageSet(Protocol):
    """What the encoder reads: images by index, in batches, and what their pixels depend on.
    data.CaptionImages is one; a protocol, because data.py imports this module, not the reverse."""

    def __len__(self) -> int: ...

    def batches(self, indices: Iterable[int], batch: int) -> Iterator[torch.Tensor]: ...

    def fingerprint(self, h) -> None: ...


def cache_dir() -> Path:
    """$GPULAB_CACHE, else $XDG_CACHE_HOME/gpulab, else ~/.cache/gpulab."""
    if os.environ.get("GPULAB_CACHE"):
        return Path(os.environ["GPULAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpulab"


def cache_key(name: str, weights_from: str, seed: int, images: ImageSet) -> str:
    h = hashlib.sha256(f"{name}|{weights_from}".encode())
    if weights_from == "random initialisation":
        h.update(f"seed {seed}".encode())
    else:
        st = Path(weights_from).stat()
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    images.fingerprint(h)
    return h.hexdigest()[:32]


def _all_agree(flag: bool, dist: DistInfo, device: torch.device) -> bool:
    if not dist.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item())


def _load(path: Path, n: int, dim: int) -> torch.Tensor | None:
    try:
        feats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed
        return None
    ok = isinstance(feats, torch.Tensor) and tuple(feats.shape) == (n, dim)
    return feats if ok else None


@torch.no_grad()
def _encode(backbone: Backbone, images: ImageSet, device, dist: DistInfo, label: str):
    """Features of images[rank::world] on this rank, in order."""
    mine = range(dist.rank, len(images), dist.world_size)
    out = torch.empty(len(mine), backbone.dim, device=device)
    done = 0
    with ProgressBar(label, len(mine), enabled=dist.is_main) as bar:
        for pixels in images.batches(mine, BATCH):
            out[done : done + len(pixels)] = backbone(pixels.to(device)).float()
            done += len(pixels)
            bar.update(done)
    return out


def _gather(mine: torch.Tensor, n: int, dist: DistInfo) -> torch.Tensor:
    """Reassemble the interleaved shares of all ranks into (n, dim)."""
    if not dist.distributed:
        return mine.cpu()
    share = -(-n // dist.world_size)
    padded = torch.zeros(share, mine.shape[1], device=mine.device)
    padded[: len(mine)] = mine
    parts = [torch.empty_like(padded) for _ in range(dist.world_size)]
    tdist.all_gather(parts, padded)
    out = torch.empty(n, mine.shape[1])
    for r, part in enumerate(parts):
        count = len(range(r, n, dist.world_size))
        out[r :: dist.world_size] = part[:count].cpu()
    return out


def cached_features(
    backbone: Backbone,
    name: str,
    weights_from: str,
    seed: int,
    images: ImageSet,
    device: torch.device,
    dist: DistInfo,
    label: str = "encode",
) -> tuple[torch.Tensor, bool]:
    """(features (N, dim) on the CPU, whether they came from the cache)."""
    key = cache_key(name, weights_from, seed, images)
    path = cache_dir() / "caption-features" / f"{name}-{key}.pt"
    feats = _load(path, len(images), backbone.dim) if path.is_file() else None
    if _all_agree(feats is not None, dist, device):
        return feats, True
    backbone.to(device)
    feats = _gather(_encode(backbone, images, device, dist, label), len(images), dist)
    if dist.is_main:
        # a read-only cache only costs the next run the encoding time
        with contextlib.suppress(OSError, GpulabError):
            save_checkpoint(path, feats)
    return feats, False
