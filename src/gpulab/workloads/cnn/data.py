"""Inputs for the `cnn` workload: synthetic batches made once on the device, or an ImageFolder.

Synthetic batches are random (never zeros), generated once on the training device, so the
figure measures the accelerator alone. A folder of class sub-folders of JPEGs goes through
torch's DataLoader with ImageNet-style augmentation and keeps a held-out split per class.
"""

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from gpulab.data import LoaderBatches
from gpulab.data.batches import deliver, loader_workers, per_rank_batch
from gpulab.data.decode import IMAGENET_MEAN, IMAGENET_STD
from gpulab.data.images import open_image
from gpulab.data.shards import ShardSet, is_packed
from gpulab.data.stream import Decoding, HeldOutBatches, ShardBatches
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError, first_line


class SyntheticBatches:
    """`count` random batches on the device, cycled for `steps` steps an epoch."""

    def __init__(
        self,
        batch_size: int,
        dist: DistInfo,
        steps: int,
        image_size: int,
        classes: int,
        device: torch.device,
        seed: int,
        channels_last: bool,
        count: int = 2,
    ):
        self.batch_size, self.steps_per_epoch = batch_size, steps
        self.ready_ahead = 0
        local = per_rank_batch(batch_size, dist)
        g = torch.Generator(device=device).manual_seed(seed * 1_000 + dist.rank)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [
            (
                torch.randn(local, 3, image_size, image_size, generator=g, device=device).to(
                    memory_format=fmt
                ),
                torch.randint(classes, (local,), generator=g, device=device),
            )
            for _ in range(count)
        ]

    def epoch(
        self, epoch: int, start_step: int = 0, out=None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        for step in range(start_step, self.steps_per_epoch):
            yield deliver(self.batches[step % len(self.batches)], out)


def load_rgb(path: str, at_least: int | None = None):
    return open_image(Path(path), at_least=at_least)


def decode_at_least(size: int, train: bool) -> int:
    """Pixels a folder image must keep on its shorter side so that every crop the transforms
    take still spans `size`; a large JPEG is then decoded at a reduced DCT scale.

    RandomResizedCrop keeps at least 8% of the area at an aspect of at most 4:3, so its crop's
    shorter side is at least sqrt(0.06 * W * H), which is no less than sqrt(0.06) times the
    image's shorter side. Evaluation resizes the shorter side to size * 256 / 224.
    """
    return math.ceil(size / math.sqrt(0.08 * 3 / 4)) if train else round(size * 256 / 224)


def transforms(size: int, train: bool):
    from torchvision import transforms as T

    steps = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if train
        else [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    )
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder(root: Path, size: int, train: bool):
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise GpulabError(
            f"data={root} is not a folder; pass 'synthetic' or a folder of class sub-folders"
        )
    try:
        loader = functools.partial(load_rgb, at_least=decode_at_least(size, train))
        return ImageFolder(str(root), transform=transforms(size, train), loader=loader)
    except (FileNotFoundError, RuntimeError) as e:
        raise GpulabError(
            f"data={root} holds no images in class sub-folders ({first_line(e)}); "
            "lay it out as DIR/CLASS/IMAGE.jpg"
        ) from None


def _check_classes(root: Path, classes: list[str], labels) -> None:
    if len(classes) < 2:
        raise GpulabError(
            f"data={root} has {len(classes)} class folder; classification needs at least 2"
        )
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        lonely = classes[int(counts.argmin())]
        raise GpulabError(
            f"data={root}: class {lonely!r} has {counts.min()} image; each class needs at "
            "least 2 (one to train on, one held out)"
        )


def shard_data(cfg, root: Path, device, dist: DistInfo, channels_last: bool, workers: int):
    """Packed shards: streamed, decoded on CPU workers or on the GPU (the decode setting)."""
    shards = ShardSet(root)
    if shards.manifest["kind"] != "imagefolder":
        raise GpulabError(
            f"data={root} holds {shards.manifest['kind']} shards; cnn needs an image folder's"
        )
    _check_classes(root, shards.classes, shards.label)
    train_ids, test_ids = split_per_class(shards.label, cfg.test_fraction, cfg.seed)
    # auto: decode in the CPU workers. On an H100 with 16 cores that kept ResNet-50 at up to
    # 92% of its synthetic rate (a short window: an upper bound); nvJPEG on the same GPU took
    # as much GPU time per image as the training step itself and halved it
    # (benchmarks/NOTES-feed_speed.md).
    mode = "cpu" if cfg.decode == "auto" else cfg.decode
    train = ShardBatches(
        shards,
        np.array(train_ids),
        cfg.batch_size,
        dist,
        cfg.seed,
        device,
        Decoding(mode, cfg.image_size, True, cfg.seed, cfg.skip_bad),
        workers,
        cfg.shuffle_buffer,
        channels_last,
    )
    if cfg.steps_per_epoch:
        train.steps_per_epoch = min(train.steps_per_epoch, cfg.steps_per_epoch)
    per_rank = max(1, cfg.batch_size // dist.world_size)
    test = HeldOutBatches(shards, np.array(test_ids), cfg.image_size, per_rank, cfg.skip_bad)
    first = HeldOutBatches(shards, np.array(test_ids[:256]), cfg.image_size, 256, cfg.skip_bad)
    batch = next(iter(first), None)
    if batch is None:
        raise GpulabError(f"data={root}: no held-out image decodes; repack the source")
    x, y = batch
    x = (
        x.to(device).contiguous(memory_format=torch.channels_last)
        if channels_last
        else x.to(device)
    )
    return CnnData(train, len(shards.classes), str(root), test, (x, y.to(device)), channels_last)


def split_per_class(targets: list[int], test_fraction: float, seed: int):
    """Train and held-out indices; each class keeps at least one image on each side."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_test = min(max(1, int(round(len(idx) * test_fraction))), len(idx) - 1)
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
    return sorted(train), sorted(test)


@dataclass
class CnnData:
    train: SyntheticBatches | LoaderBatches | ShardBatches
    classes: int
    source: str
    test: Iterable | None = None  # held-out (images, labels) CPU batches of a folder or shards
    eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # fixed held-out batch, on device
    channels_last: bool = False


def build_cnn_data(cfg, device: torch.device, dist: DistInfo, channels_last: bool) -> CnnData:
    if cfg.data == "synthetic":
        train = SyntheticBatches(
            cfg.batch_size,
            dist,
            cfg.steps_per_epoch or 100,
            cfg.image_size,
            cfg.classes,
            device,
            cfg.seed,
            channels_last,
        )
        return CnnData(train, cfg.classes, "synthetic", channels_last=channels_last)
    root = Path(cfg.data)
    workers = loader_workers(cfg.workers)
    if is_packed(root):
        return shard_data(cfg, root, device, dist, channels_last, workers)
    if cfg.decode == "gpu":
        raise GpulabError(
            f"decode=gpu reads packed shards; pack {root} first with `gpulab data pack`"
        )
    full = image_folder(root, cfg.image_size, train=True)
    _check_classes(root, full.classes, full.targets)
    train_idx, test_idx = split_per_class(full.targets, cfg.test_fraction, cfg.seed)
    held_out = Subset(image_folder(root, cfg.image_size, train=False), test_idx)
    train = LoaderBatches(
        Subset(full, train_idx), cfg.batch_size, dist, cfg.seed, device, num_workers=workers
    )
    if cfg.steps_per_epoch:  # a shorter epoch: a quick timing over a large folder
        train.steps_per_epoch = min(train.steps_per_epoch, cfg.steps_per_epoch)
    test = DataLoader(
        held_out, batch_size=max(1, cfg.batch_size // dist.world_size), num_workers=workers
    )
    first = [held_out[i] for i in range(min(len(held_out), 256))]
    x = torch.stack([f[0] for f in first]).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.tensor([f[1] for f in first], device=device)
    return CnnData(train, len(full.classes), str(root), test, (x, y), channels_last)
