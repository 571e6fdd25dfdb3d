"""Batch sources for the training loop.

`batch_size` is always the *global* batch: under torchrun each of the N ranks computes on its
own B/N slice of every global batch, so one process and N processes take the same optimisation
steps for the same seed. Each epoch's order is derived from (seed, epoch) alone, so a resumed
run can start in the middle of an epoch and see exactly the batches it had not seen.
"""

import itertools
import os
from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gpulab.data.prefetch import DevicePrefetcher
from gpulab.runtime.device import usable_cores
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError

READ_AHEAD = 2  # batches each loader worker has in flight (DataLoader's prefetch_factor)


def read_ahead(workers: int) -> int:
    """Batches a loader with `workers` processes can have ready before the step asks for them:
    READ_AHEAD per worker plus the one in the device prefetcher."""
    return READ_AHEAD * workers + 1


MAX_WORKERS = 16  # per process: a 16-core host per GPU decodes ImageNet-size JPEGs for a GPU


def loader_workers(option: int | None) -> int:
    """DataLoader processes for reading files: the option if given, else one per core this
    process may run on, shared among the ranks torchrun started on this machine, up to
    MAX_WORKERS."""
    if option is not None:
        return option
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_WORKERS, usable_cores() // ranks_here))


class Batches(Protocol):
    steps_per_epoch: int
    batch_size: int  # global
    ready_ahead: int  # batches its workers can make before the first step asks (read_ahead)

    def epoch(
        self, epoch: int, start_step: int = 0, out: tuple[torch.Tensor, ...] | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The epoch's batches from `start_step` on; with `out`, each batch is written into those
        buffers (a CUDA graph's static inputs) and `out` itself is yielded."""
        ...


def endless(batches: Batches) -> Iterator[tuple[torch.Tensor, ...]]:
    """Epoch 0, 1, 2, ... one after another, for timing a loader past the end of one epoch."""
    for epoch in itertools.count():
        yield from batches.epoch(epoch)


def deliver(batch: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...] | None):
    """The batch itself, or, given `out` (a CUDA graph's static inputs), `out` filled with it."""
    if out is None:
        return batch
    for buffer, t in zip(out, batch):
        buffer.copy_(t, non_blocking=True)
    return out


def full_batches(samples: int, batch_size: int, what: str = "samples") -> int:
    """Whole batches in an epoch of `samples` (the last partial one is dropped); none is an error."""
    if samples < batch_size:
        raise GpulabError(
            f"only {samples} {what}, fewer than one batch of {batch_size}; "
            "give more data or a smaller batch_size"
        )
    return samples // batch_size


def per_rank_batch(batch_size: int, dist: DistInfo) -> int:
    if batch_size % dist.world_size:
        raise GpulabError(
            f"batch size {batch_size} does not split evenly over {dist.world_size} processes; "
            f"use a multiple of {dist.world_size}"
        )
    return batch_size // dist.world_size


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order, the same on every device and rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class TensorBatches:
    """Batches drawn by indexing tensors that already live on the training device.

    The only host→device traffic is one index permutation per epoch; nothing synchronizes.
    The last partial batch is dropped.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        dist: DistInfo,
        seed: int,
        shuffle: bool = True,
    ):
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("all tensors need the same number of rows")
        self.tensors = tensors
        self.batch_size = batch_size
        self.local_batch = per_rank_batch(batch_size, dist)
        self.rank = dist.rank
        self.seed = seed
        self.shuffle = shuffle
        self.n = n
        self.steps_per_epoch = full_batches(n, batch_size, "training rows")
        self.ready_ahead = 0  # indexing on the device: nothing is made in advance

    def epoch(
        self, epoch: int, start_step: int = 0, out=None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        device = self.tensors[0].device
        order = (
            epoch_permutation(self.n, self.seed, epoch) if self.shuffle else torch.arange(self.n)
        )
        used = order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, -1)
        mine = used[:, self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
        if device.type == "cuda":
            mine = mine.contiguous().pin_memory()
        mine = mine.to(device, non_blocking=True)
        for step in range(start_step, self.steps_per_epoch):
            idx = mine[step]
            if out is None:
                yield tuple(t.index_select(0, idx) for t in self.tensors)
            else:
                for t, buffer in zip(self.tensors, out):
                    torch.index_select(t, 0, idx, out=buffer)
                yield out


class LoaderBatches:
    """Batches from a map-style Dataset through a DataLoader and a DistributedSampler.

    Each rank loads its own B/N slice; the sampler's `set_epoch` gives every epoch a new order
    that all ranks agree on. Host→device copies overlap compute (DevicePrefetcher).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        dist: DistInfo,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        shuffle: bool = True,
    ):
        self.batch_size = batch_size
        self.device = device
        self.sampler = DistributedSampler(
            dataset,
            num_replicas=dist.world_size,
            rank=dist.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.loader = DataLoader(
            dataset,
            batch_size=per_rank_batch(batch_size, dist),
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=num_workers > 0,
            prefetch_factor=READ_AHEAD if num_workers else None,
        )
        full_batches(len(dataset), batch_size)  # an error without one whole batch
        self.steps_per_epoch = len(self.loader)
        self.ready_ahead = read_ahead(num_workers) if num_workers else 0

    def epoch(
        self, epoch: int, start_step: int = 0, out=None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        self.sampler.set_epoch(epoch)
        skipped = (b for step, b in enumerate(self.loader) if step >= start_step)
        for batch in DevicePrefetcher(skipped, self.device):
            yield deliver(batch, out)
