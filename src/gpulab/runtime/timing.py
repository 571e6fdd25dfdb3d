"""Timing without a sync on the hot path.

A `Timeline` records instants: CUDA events on the current stream (read once, after the run) or
a host clock where the device's work is synchronous. Steps are pairs of instants. A `StepMeter`
turns a training loop's instants into what it took: timed steps, data wait, pauses.
"""

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def host_clock() -> float:
    """Seconds on the host's monotonic clock; the one clock the training loop reads (tests
    replace it with a fake one to make parts of a run take a known time)."""
    return time.perf_counter()


def now(clock: Callable[[], float] | None = None) -> float:
    """`clock()`, or the module's `host_clock()` (looked up at each call, so it can be replaced)."""
    return clock() if clock is not None else host_clock()


class Timeline:
    """Instants marked during a run; `seconds()` converts them all at once afterwards."""

    def __init__(self, device: torch.device, clock: Callable[[], float] | None = None):
        self.device = device
        self.use_events = device.type == "cuda"
        self.clock = clock  # host instants: None reads `host_clock`
        self._marks: list = []

    def mark(self) -> int:
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(now(self.clock))
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


@dataclass(frozen=True)
class StepTiming:
    """What one segment of training took (a resumed run's segment only: its own steps).

    `train_s` is the wall time from the first step's start to the last step's end, gaps between
    steps included, pauses (evaluations, checkpoints) not. `stats` and `step_s` cover the timed
    steps: all steps but the first `warmup_steps`. `data_wait_s` is host time spent waiting for
    batches, warm-up included; it is part of `train_s`, not extra to it.
    """

    steps: int  # steps taken in this segment, warm-up included
    warmup_steps: int
    train_s: float
    paused_s: float
    data_wait_s: float
    stats: StepStats
    step_s: tuple[float, ...]  # each timed step's seconds, in order
    instants_s: tuple[float, ...]  # each timeline mark, in seconds from the segment's start

    @property
    def timed_steps(self) -> int:
        return self.stats.steps

    def since_start_s(self, mark: int) -> float:
        """Seconds from the segment's start to `mark` (a `StepMeter.latest`), pauses included."""
        return self.instants_s[mark]


class StepMeter:
    """Times a training loop's steps without a sync per step.

    Per step: `with meter.data_wait(): batch = next(batches)`, run the step, `meter.step_done()`.
    Evaluations and checkpoints run inside `with meter.pause():` and count neither as a step
    nor in the train time. Each step spans from the end of what came before it (the previous
    step or pause) to its own end, so its time includes its data wait. `result()` reads the
    clock marks once (one sync on CUDA), after the loop.

    An `energy` meter (runtime/energy.py), when given, measures the timed steps: it starts when
    `energy_after_steps` steps are done (the warm-up), stops at each pause and resumes when the
    next step begins (its `data_wait`), and stops for good at `steps_end()`.
    """

    def __init__(
        self,
        device: torch.device,
        clock: Callable[[], float] | None = None,
        energy=None,
        energy_after_steps: int = 0,
    ):
        self.timeline = Timeline(device, clock)
        self.clock = clock
        self._start = self.latest = self.timeline.mark()
        self._steps: list[tuple[int, int]] = []  # (start mark, end mark)
        self._pauses: list[tuple[int, int]] = []
        self.data_wait_s = 0.0
        self.energy, self._energy_after = energy, energy_after_steps
        self._energy_paused = False
        if energy is not None and energy_after_steps == 0:
            energy.start()

    @contextmanager
    def data_wait(self) -> Iterator[None]:
        """Host time spent in the block: waiting for the next batch (a step's beginning)."""
        if self._energy_paused:
            self._energy_paused = False
            self.energy.start()
        start = now(self.clock)
        yield
        self.data_wait_s += now(self.clock) - start

    def step_done(self) -> None:
        end = self.timeline.mark()
        self._steps.append((self.latest, end))
        self.latest = end
        if self.energy is not None and len(self._steps) == self._energy_after:
            self.energy.start()

    @contextmanager
    def pause(self) -> Iterator[None]:
        """An evaluation or checkpoint: its time is left out; `latest` is its end afterwards."""
        if self.energy is not None and self.energy.running:
            self.energy.stop()
            self._energy_paused = True
        yield
        end = self.timeline.mark()
        self._pauses.append((self.latest, end))
        self.latest = end

    def steps_end(self) -> None:
        """The last step is done: the energy window closes (what follows is outside it)."""
        if self.energy is not None:
            self.energy.close()
            self._energy_after, self._energy_paused = -1, False  # nothing starts it again

    def result(self, samples_per_step: int, warmup_steps: int) -> StepTiming:
        """The segment's timing; `warmup_steps` first steps are not timed (at least one step is)."""
        seconds = self.timeline.seconds()
        step_s = [seconds[end] - seconds[start] for start, end in self._steps]
        warm = min(warmup_steps, max(len(step_s) - 1, 0))
        train_end = self._steps[-1][1] if self._steps else self._start
        # pauses after the last step (the final evaluation) are outside the window already
        paused_s = sum(seconds[b] - seconds[a] for a, b in self._pauses if b <= train_end)
        return StepTiming(
            steps=len(step_s),
            warmup_steps=warm,
            train_s=seconds[train_end] - seconds[self._start] - paused_s,
            paused_s=paused_s,
            data_wait_s=self.data_wait_s,
            stats=summarize_steps(step_s[warm:], samples_per_step),
            step_s=tuple(step_s[warm:]),
            instants_s=tuple(s - seconds[self._start] for s in seconds),
        )


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
