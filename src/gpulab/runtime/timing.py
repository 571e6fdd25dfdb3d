"""Timing without a sync on the hot path.

A `Timeline` records instants: CUDA events on the current stream (read once, after the run) or
a host clock where the device's work is synchronous. Steps are pairs of instants.
"""

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from gpulab.runtime.device import synchronize


@dataclass
class StepStats:
    """Summary of a run's timed steps (warm-up steps excluded)."""

    steps: int
    samples: int
    total_s: float
    samples_per_s: float
    step_median_s: float
    step_iqr_s: float
    step_p10_s: float
    step_p90_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def summarize_steps(step_s: list[float], samples_per_step: int) -> StepStats:
    """Throughput as total samples / total time, plus median and IQR of the step times."""
    if not step_s:
        return StepStats(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    times = np.asarray(step_s, dtype=np.float64)
    total_s = float(times.sum())
    samples = samples_per_step * len(times)
    q10, q25, q50, q75, q90 = np.percentile(times, [10, 25, 50, 75, 90])
    return StepStats(
        steps=len(times),
        samples=samples,
        total_s=total_s,
        samples_per_s=samples / total_s if total_s > 0 else 0.0,
        step_median_s=float(q50),
        step_iqr_s=float(q75 - q25),
        step_p10_s=float(q10),
        step_p90_s=float(q90),
    )


class Timeline:
    """Instants marked during a run; `seconds()` converts them all at once afterwards."""

    def __init__(self, device: torch.device):
        self.device = device
        self.use_events = device.type == "cuda"
        self._marks: list = []

    def mark(self) -> int:
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())
        return len(self._marks) - 1

    def seconds(self) -> list[float]:
        """Seconds from the first mark to each mark; synchronizes once on CUDA."""
        if not self._marks:
            return []
        first = self._marks[0]
        if self.use_events:
            synchronize(self.device)
            return [first.elapsed_time(m) / 1e3 for m in self._marks]
        return [m - first for m in self._marks]


def seconds_per_call(
    run, device: torch.device, samples: int, sample_s: float = 0.05
) -> list[float]:
    """`samples` measurements of one call of `run`; each times enough back-to-back calls to last
    about `sample_s` (calibrated by one call), synchronizing the device before each clock read."""
    synchronize(device)
    t0 = time.perf_counter()
    run()
    synchronize(device)
    inner = max(1, math.ceil(sample_s / max(time.perf_counter() - t0, 1e-7)))
    out = []
    for _ in range(samples):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            run()
        synchronize(device)
        out.append((time.perf_counter() - t0) / inner)
    return out
