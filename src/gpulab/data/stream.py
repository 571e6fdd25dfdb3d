"""Streaming packed image shards into training: exact epoch orders, parallel workers, CPU or GPU
decoding, and host→device copies overlapped with compute.

The order of an epoch is a function of (seed, epoch) alone, computed from the index (no sample is
read to compute it): shards in a random order, each read front to back, then a bounded shuffle
in which no sample moves more than `buffer` places from its place in that stream — so reads stay
close to sequential and memory stays bounded. The epoch is cut to whole global batches, and
rank r takes slice r of every global batch: every rank gets the same number of samples, and a
run resumed at step k reads exactly the batches from k on. Worker w of W builds batches
w, w+W, ... and the DataLoader hands them out in order. A sample's crop and flip are drawn from
(seed, epoch, batch, its place in the global batch), so N ranks augment exactly as one process.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gpulab.data.batches import (
    READ_AHEAD,
    deliver,
    full_batches,
    per_rank_batch,
    read_ahead,
)
from gpulab.data.decode import (
    DecodeError,
    augment,
    decode_augment_cpu,
    decode_gpu,
    normalize,
    sample_rng,
)
from gpulab.data.prefetch import DevicePrefetcher
from gpulab.data.shards import ShardSet
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError


def epoch_order(
    ids: np.ndarray, shard: np.ndarray, n_shards: int, seed: int, epoch: int, buffer: int
) -> np.ndarray:
    """The sample ids `ids` (ascending, i.e. in file order) in this epoch's order."""
    rng = np.random.default_rng([seed, epoch])
    rank_of_shard = np.argsort(rng.permutation(n_shards))
    stream = ids[np.lexsort((ids, rank_of_shard[shard[ids]]))]
    jitter = np.arange(len(stream)) + rng.random(len(stream)) * max(buffer, 0)
    return stream[np.argsort(jitter, kind="stable")]


@dataclass
class Decoding:
    mode: str  # "cpu": decoded and cropped in workers; "gpu": bytes to the device, nvJPEG there
    size: int
    train: bool  # random-resized crops and flips; else centre crops
    seed: int
    skip_bad: bool = False


class _BatchReader(IterableDataset):
    """Yields this worker's batches (rows w, w+W, ...) of the rows given, in order, as
    (pixels, labels, samples skipped) for CPU decoding or (JPEG bytes, labels, row) for GPU
    decoding; the counts stay Python ints, which the device prefetcher leaves on the host."""

    def __init__(
        self,
        shards: ShardSet,
        rows: np.ndarray,
        first_row: int,
        epoch: int,
        dec: Decoding,
        first_slot: int = 0,
    ):
        self.shards, self.rows, self.first_row, self.epoch = shards, rows, first_row, epoch
        self.dec, self.first_slot = dec, first_slot  # this rank's first place in a global batch
        self.last_good = None  # (pixels, label) of a sample that decoded, to stand in for others

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        for k in range(w, len(self.rows), n):
            yield self._batch(self.rows[k], self.first_row + k)

    def _batch(self, ids: np.ndarray, row: int):
        datas, labels = [], torch.from_numpy(self.shards.label[ids].astype(np.int64))
        for i in ids:
            datas.append(image_bytes(self.shards, int(i)))
        if self.dec.mode == "gpu":
            return datas, labels, row
        crops = []
        for j, (i, data) in enumerate(zip(ids, datas)):
            rng = sample_rng(self.dec.seed, self.epoch, row, self.first_slot + j)
            try:
                crops.append(decode_augment_cpu(data, rng, self.dec.size, self.dec.train))
            except DecodeError as e:
                if not self.dec.skip_bad:
                    raise _bad_sample(self.shards, int(i), e) from None
                crops.append(None)
        bad = sum(c is None for c in crops)
        if not self.dec.train:  # held-out: a bad image is left out, not replaced
            keep = [j for j, c in enumerate(crops) if c is not None]
            pixels = torch.stack([crops[j] for j in keep]) if keep else None
            return pixels, labels[keep], bad
        crops, labels = _fill_bad(crops, labels, self.last_good)
        self.last_good = crops[-1], labels[-1]
        return torch.stack(crops), labels, bad


IMAGE_MEMBERS = ("jpg", "png", "webp", "bmp", "tif", "tiff")


def image_bytes(shards: ShardSet, i: int) -> bytes:
    """The encoded image of sample i."""
    members = shards.read(i)
    image = next((members[e] for e in IMAGE_MEMBERS if e in members), None)
    if image is None:
        raise GpulabError(f"{shards.where(i)}: sample {i} holds no image; repack the data")
    return image


class HeldOutBatches:
    """(normalised centre crops, labels) CPU batches of `ids` in order, for held-out evaluation:
    the training reader's decoding, so a bad image is reported the same way, or with
    `skip_bad` left out and counted in `skipped`."""

    def __init__(
        self, shards: ShardSet, ids: np.ndarray, size: int, batch: int, skip_bad: bool = False
    ):
        self.shards, self.ids, self.size, self.batch = shards, ids, size, batch
        self.dec = Decoding("cpu", size, False, 0, skip_bad)
        self.skipped = 0

    def __iter__(self):
        rows = [self.ids[k : k + self.batch] for k in range(0, len(self.ids), self.batch)]
        for pixels, labels, bad in _BatchReader(self.shards, rows, 0, 0, self.dec):
            self.skipped += bad
            if pixels is not None:  # not a batch of bad images only
                yield normalize(pixels, False), labels


def _bad_sample(shards: ShardSet, i: int, e: Exception) -> GpulabError:
    return GpulabError(
        f"{shards.where(i)}: sample {i} is not a decodable image ({e}); "
        "repack the source or pass --set skip_bad=true"
    )


def _fill_bad(images: list, labels: torch.Tensor, last_good=None):
    """A skipped sample's slot is filled with a copy of a good one of the same batch, so every
    batch keeps its shape (static shapes, CUDA graphs); a batch with none takes `last_good`
    (image, label), the last sample that decoded before it."""
    good = [j for j, im in enumerate(images) if im is not None]
    if not good and last_good is None:
        raise GpulabError(
            "every image of the first batch failed to decode, so no good image can stand in "
            "for them; check the shards with `gpulab data verify` and repack the source"
        )
    for j, im in enumerate(images):
        if im is not None:
            continue
        if good:
            src = good[j % len(good)]
            images[j], labels[j] = images[src], labels[src]
        else:
            images[j], labels[j] = last_good
    return images, labels


class ShardBatches:
    """Batches of (normalised images, labels) streamed from packed shards, on the device."""

    def __init__(
        self,
        shards: ShardSet,
        ids: np.ndarray,
        batch_size: int,
        dist: DistInfo,
        seed: int,
        device: torch.device,
        dec: Decoding,
        workers: int,
        buffer: int = 4096,
        channels_last: bool = False,
    ):
        self.shards, self.ids = shards, np.sort(np.asarray(ids, dtype=np.int64))
        self.batch_size, self.local = batch_size, per_rank_batch(batch_size, dist)
        self.seed, self.device, self.dec = seed, device, dec
        self.first_slot = dist.rank * self.local  # this rank's first place in a global batch
        self.workers, self.buffer, self.channels_last = workers, buffer, channels_last
        self.steps_per_epoch = full_batches(len(self.ids), batch_size)
        self.ready_ahead = read_ahead(workers) if workers else 0
        self.skipped = 0  # samples that failed to decode under skip_bad
        self.last_good = None  # GPU decoding: the last decoded (image, label), for _fill_bad

    def rows(self, epoch: int) -> np.ndarray:
        """(steps, per-rank batch) sample ids this rank reads in `epoch`."""
        order = epoch_order(
            self.ids, self.shards.shard, len(self.shards.paths), self.seed, epoch, self.buffer
        )
        steps = order[: self.steps_per_epoch * self.batch_size].reshape(self.steps_per_epoch, -1)
        return steps[:, self.first_slot : self.first_slot + self.local]

    def loader(self, epoch: int, start_step: int = 0) -> DataLoader:
        """The host side alone: batches as the workers produce them (no copy, no decode on GPU)."""
        reader = _BatchReader(
            self.shards,
            self.rows(epoch)[start_step:],
            start_step,
            epoch,
            self.dec,
            first_slot=self.first_slot,
        )
        return DataLoader(
            reader,
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=READ_AHEAD if self.workers else None,
        )

    def epoch(
        self, epoch: int, start_step: int = 0, out=None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        for item in DevicePrefetcher(self.loader(epoch, start_step), self.device):
            yield deliver(self._finish(item, epoch), out)

    def _finish(self, item, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dec.mode == "gpu":
            datas, labels, row = item
            images = self._decode_on_device(datas, row, labels)
            rngs = [
                sample_rng(self.dec.seed, epoch, row, self.first_slot + j)
                for j in range(len(images))
            ]
            pixels = augment(images, rngs, self.dec.size, self.dec.train)
            self.last_good = images[-1], labels[-1]
        else:
            pixels, labels, bad = item
            self.skipped += bad
        return normalize(pixels, self.channels_last), labels.to(self.device, non_blocking=True)

    def _decode_on_device(self, datas, row: int, labels: torch.Tensor) -> list[torch.Tensor]:
        try:
            return decode_gpu(datas, self.device)
        except DecodeError as e:
            if not self.dec.skip_bad:
                raise GpulabError(
                    f"batch {row}: {e}; a sample is not a decodable JPEG: repack the source or "
                    "pass --set skip_bad=true"
                ) from None
        images = []
        for data in datas:
            try:
                images.append(decode_gpu([data], self.device)[0])
            except DecodeError:
                images.append(None)
                self.skipped += 1
        images, _ = _fill_bad(images, labels, self.last_good)
        return images
