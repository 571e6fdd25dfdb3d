"""Overlap host→device copies with compute: batch k+1 is copied on a side CUDA stream while
batch k runs on the default stream. On other devices it is a plain pass-through."""

from collections.abc import Iterable, Iterator

import torch


def _to(batch, device: torch.device, non_blocking: bool):
    """Top-level tensors of a batch moved to `device`; anything else (e.g. lists) passes."""
    return tuple(
        t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t for t in batch
    )


class DevicePrefetcher:
    """Iterate batches already on `device`, the next one's copy in flight.

    The source's tensors should be in pinned memory (DataLoader(pin_memory=True)) for the copy
    to be asynchronous. Before a batch is handed out, the compute stream waits for its copy,
    and each tensor is marked as used by the compute stream (`record_stream`), so the caching
    allocator cannot hand its memory to the next copy while compute still reads it.
    """

    def __init__(self, batches: Iterable, device: torch.device):
        self.batches, self.device = batches, torch.device(device)

    def __iter__(self) -> Iterator[tuple]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield _to(batch, self.device, non_blocking=False)
            return
        side = torch.cuda.Stream(self.device)
        source = iter(self.batches)

        def load():
            batch = next(source, None)
            if batch is None:
                return None
            with torch.cuda.stream(side):
                return _to(batch, self.device, non_blocking=True)

        pending = load()
        while pending is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(side)
            for t in pending:
                if isinstance(t, torch.Tensor) and t.is_cuda:
                    t.record_stream(compute)
            current, pending = pending, load()
            yield current
