"""The training loop's timing, checked against a fake clock: every figure is exact.

Parts of a run are made to "take" a known number of seconds by moving a fake clock forward
(no sleeps): the meter's own tests drive it directly, the end-to-end tests replace the clock
the training loop reads and slow its loader, step, evaluation and checkpoint.
"""

import os

import pytest
import torch

from gpulab.runtime import energy, timing
from gpulab.runtime.timing import StepMeter, Timeline
from gpulab.train import TrainOptions, train
from gpulab.workloads.base import QualityTarget
from gpulab.workloads.registry import get_workload
from helpers import FakeClock

CPU = torch.device("cpu")


def _steps(meter: StepMeter, clock: FakeClock, n: int, wait_s: float, compute_s: float) -> None:
    for _ in range(n):
        with meter.data_wait():
            clock.advance(wait_s)
        clock.advance(compute_s)
        meter.step_done()


# -- the meter -----------------------------------------------------------------------------------


def test_timeline_reads_the_clock_it_is_given():
    clock = FakeClock()
    timeline = Timeline(CPU, clock)
    timeline.mark()
    clock.advance(2.5)
    timeline.mark()
    assert timeline.seconds() == [0.0, 2.5]


def test_a_slow_loader_is_data_wait_not_compute():
    clock = FakeClock()
    meter = StepMeter(CPU, clock)
    _steps(meter, clock, 4, wait_s=2.0, compute_s=0.5)
    t = meter.result(samples_per_step=10, warmup_steps=0)
    assert t.data_wait_s == 8.0
    assert t.train_s == 10.0  # the wait is inside the steps' wall time...
    assert t.train_s - t.data_wait_s == 2.0  # ...and what is left is the compute
    assert t.step_s == (2.5,) * 4


def test_evaluations_and_checkpoints_are_left_out_of_the_throughput():
    clock = FakeClock()
    meter = StepMeter(CPU, clock)
    _steps(meter, clock, 3, wait_s=0.0, compute_s=1.0)
    with meter.pause():  # an evaluation
        clock.advance(100.0)
    eval_mark = meter.latest
    with meter.pause():  # a checkpoint
        clock.advance(50.0)
    _steps(meter, clock, 3, wait_s=0.0, compute_s=1.0)
    t = meter.result(samples_per_step=8, warmup_steps=0)
    assert t.paused_s == 150.0
    assert t.train_s == 6.0
    assert t.step_s == (1.0,) * 6  # the step after the pauses starts where they end
    assert t.stats.samples_per_s == 8.0
    assert t.since_start_s(eval_mark) == 103.0  # evaluation times keep the pauses


def test_a_pause_after_the_last_step_is_outside_the_train_time():
    clock = FakeClock()
    meter = StepMeter(CPU, clock)
    _steps(meter, clock, 2, wait_s=0.0, compute_s=1.0)
    with meter.pause():  # the final evaluation
        clock.advance(100.0)
    t = meter.result(samples_per_step=1, warmup_steps=0)
    assert t.train_s == 2.0 and t.paused_s == 0.0


def test_warm_up_steps_are_not_timed():
    clock = FakeClock()
    meter = StepMeter(CPU, clock)
    _steps(meter, clock, 2, wait_s=3.0, compute_s=7.0)  # compiling, filling caches
    _steps(meter, clock, 5, wait_s=0.0, compute_s=0.5)
    t = meter.result(samples_per_step=4, warmup_steps=2)
    assert t.warmup_steps == 2 and t.steps == 7 and t.timed_steps == 5
    assert t.stats.samples_per_s == 8.0 and t.stats.step_median_s == 0.5
    assert t.step_s == (0.5,) * 5
    assert t.train_s == 22.5 and t.data_wait_s == 6.0  # the window itself keeps them


def test_at_least_one_step_is_timed():
    clock = FakeClock()
    meter = StepMeter(CPU, clock)
    _steps(meter, clock, 3, wait_s=0.0, compute_s=1.0)
    t = meter.result(samples_per_step=1, warmup_steps=10)
    assert t.warmup_steps == 2 and t.timed_steps == 1


def test_no_steps_time_nothing():
    t = StepMeter(CPU, FakeClock()).result(samples_per_step=1, warmup_steps=5)
    assert (t.steps, t.timed_steps, t.train_s, t.stats.samples_per_s) == (0, 0, 0.0, 0.0)


# -- through train() -----------------------------------------------------------------------------

SETUP_S, WAIT_S, COMPUTE_S, EVAL_S, CHECKPOINT_S = 7.0, 5.0, 1.0, 100.0, 50.0
STEP_S = WAIT_S + COMPUTE_S


@pytest.fixture
def slow_stocks(monkeypatch):
    """stocks whose data takes 7 s to build, loader waits 5 s a batch, step computes 1 s,
    evaluation takes 100 s and checkpoint 50 s, on a fake clock; its evaluations also report
    `score` = global step / 5."""
    import gpulab.train

    clock = FakeClock()
    monkeypatch.setattr(timing, "host_clock", clock)
    workload = get_workload("stocks")
    steps_taken = [0]
    build_data, loss, evaluate = workload.build_data, workload.loss, workload.evaluate

    def slow_data(cfg, device, dist):
        clock.advance(SETUP_S)
        data = build_data(cfg, device, dist)
        data.train = _SlowBatches(data.train, clock)
        return data

    def slow_loss(model, batch, data=None):
        clock.advance(COMPUTE_S)
        steps_taken[0] += 1
        return loss(model, batch, data)

    def slow_evaluate(model, data):
        clock.advance(EVAL_S)
        return {**evaluate(model, data), "score": torch.tensor(steps_taken[0] / 5)}

    def slow_save(path, state):
        clock.advance(CHECKPOINT_S)
        save(path, state)

    save = gpulab.train.save_checkpoint
    monkeypatch.setattr(workload, "build_data", slow_data)
    monkeypatch.setattr(workload, "loss", slow_loss)
    monkeypatch.setattr(workload, "evaluate", slow_evaluate)
    monkeypatch.setattr(gpulab.train, "save_checkpoint", slow_save)
    target = QualityTarget("score", 6.0, higher_is_better=True)
    monkeypatch.setattr(workload, "quality_target", lambda cfg: target)
    # debug preset: 2 epochs of 25 steps of 64 samples, 2 warm-up steps
    return workload.config("debug", {"eval_every": "5"})


class _SlowBatches:
    """A workload's batches, each one `WAIT_S` late."""

    def __init__(self, batches, clock: FakeClock):
        self.batches, self.clock = batches, clock

    def __getattr__(self, name):
        return getattr(self.batches, name)

    def epoch(self, *args, **kwargs):
        for batch in self.batches.epoch(*args, **kwargs):
            self.clock.advance(WAIT_S)
            yield batch


def test_train_times_steps_without_evaluations_checkpoints_or_warm_up(slow_stocks, tmp_path):
    record = train(
        "stocks", slow_stocks, TrainOptions(device="cpu", out=tmp_path, quiet=True)
    ).record
    t = record.timing
    assert record.position.global_step == 50
    assert t.setup_s == SETUP_S
    assert t.train_s == 50 * STEP_S
    assert t.data_wait_s == 50 * WAIT_S
    assert t.data_wait_fraction == pytest.approx(WAIT_S / STEP_S)
    # evaluations after steps 5..45 and the checkpoint after epoch 1; the evaluation after the
    # last step comes after the timed window
    assert t.eval_and_checkpoint_s == 9 * EVAL_S + CHECKPOINT_S
    assert t.warmup_steps_excluded == 2 and t.timed_steps == 48
    assert t.samples_per_s == pytest.approx(64 / STEP_S)
    assert t.step_median_s == STEP_S and t.step_s == [STEP_S] * 48
    # each evaluation's time counts everything since the start: setup, pauses, its own time
    times = {row["step"]: row["time_s"] for row in record.history}
    assert times[5] == SETUP_S + 5 * STEP_S + EVAL_S
    assert times[30] == SETUP_S + 30 * STEP_S + 6 * EVAL_S + CHECKPOINT_S
    quality = record.quality
    assert quality.reached and quality.step == 30
    assert quality.time_to_quality_s == times[30]


def test_a_resumed_run_times_only_its_own_segment(slow_stocks, tmp_path):
    options = TrainOptions(device="cpu", out=tmp_path, quiet=True, max_steps=20)
    part = train("stocks", slow_stocks, options)
    assert part.record.status == "stopped" and not part.record.quality.reached
    resumed = train("stocks", None, TrainOptions(device="cpu", quiet=True), resume=part.run_dir)
    record = resumed.record
    t = record.timing
    assert record.options.resumed_from_step == 20
    assert t.setup_s == SETUP_S
    assert t.warmup_steps_excluded + t.timed_steps == 30  # steps 21..50
    assert t.train_s == 30 * STEP_S and t.data_wait_s == 30 * WAIT_S
    assert t.eval_and_checkpoint_s == 5 * EVAL_S + CHECKPOINT_S  # steps 25..45, epoch 1
    times = {row["step"]: row["time_s"] for row in record.history}
    assert times[20] == SETUP_S + 20 * STEP_S + 4 * EVAL_S  # the first segment's, as it was
    assert times[25] == SETUP_S + 5 * STEP_S + EVAL_S  # from this segment's start
    # reached at step 30 (score 6), timed from this segment's start
    quality = record.quality
    assert quality.reached and quality.step == 30
    assert quality.time_to_quality_s == SETUP_S + 10 * STEP_S + 2 * EVAL_S + CHECKPOINT_S


def test_energy_covers_the_timed_steps_only(slow_stocks, tmp_path, monkeypatch):
    """A fake CPU package draws 10 W whenever the fake clock moves: in setup, warm-up,
    evaluations and checkpoints too; the record's energy holds the timed steps' share only."""
    watts, clock = 10, timing.host_clock  # the fixture's fake clock
    package = tmp_path / "powercap" / "intel-rapl:0"
    package.mkdir(parents=True)
    (package / "name").write_text("package-0\n")
    (package / "max_energy_range_uj").write_text(f"{2**40}\n")
    drawn_uj = [0]

    def draw(seconds: float) -> None:
        FakeClock.advance(clock, seconds)
        drawn_uj[0] += round(seconds * watts * 1e6)
        (package / "energy_uj.tmp").write_text(f"{drawn_uj[0]}\n")
        os.replace(package / "energy_uj.tmp", package / "energy_uj")  # as the kernel: at once

    draw(0.0)
    monkeypatch.setattr(clock, "advance", draw)
    monkeypatch.setattr(energy, "RAPL_ROOT", package.parent)
    record = train(
        "stocks", slow_stocks, TrainOptions(device="cpu", out=tmp_path, quiet=True)
    ).record
    e = record.energy
    assert e.cpu.source == "rapl" and e.cpu.reason is None
    assert e.cpu.seconds == 48 * STEP_S  # the 48 timed steps: not setup, warm-up or pauses
    assert e.cpu.joules == pytest.approx(watts * 48 * STEP_S) and e.cpu.watts == pytest.approx(10)
    assert e.samples == 48 * 64 and e.joules_per_sample == pytest.approx(watts * STEP_S / 64)
    assert drawn_uj[0] / 1e6 > 3 * e.cpu.joules  # the rest of the run drew more than the window
    assert e.gpu.reason == "device is cpu: no GPU energy to read"
