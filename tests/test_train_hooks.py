"""What callers hand the training loop: the device's datasheet peak and per-step hooks."""

import pytest

import gpulab.train
from gpulab.probe.peaks import datasheet_peak, training_peak
from gpulab.runtime.flops import DatasheetPeak
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload


def test_the_datasheet_peak_of_a_device_name_is_plain_data():
    h100 = datasheet_peak("NVIDIA H100 80GB HBM3")
    assert h100 == DatasheetPeak(
        {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9},
        "NVIDIA datasheet: H100 Tensor Core GPU (SXM5), 2023",
    )
    assert datasheet_peak("AMD EPYC 7B13 64-Core Processor") is None
    assert training_peak("cpu") is None  # no table for CPUs


def test_mfu_is_against_the_peak_the_caller_passes(tmp_path):
    # digits trains in fp32 here: its MFU is against the fp32 column of the peak passed in
    peak = datasheet_peak("NVIDIA H100 80GB HBM3")
    cfg = get_workload("digits").config("debug")
    options = TrainOptions(device="cpu", out=tmp_path, quiet=True, max_steps=6, datasheet_peak=peak)
    eff = train("digits", cfg, options).record.efficiency
    assert eff.peak_column == "fp32" and eff.datasheet_peak_tflops == 67.0
    assert eff.mfu == pytest.approx(eff.achieved_tflops / 67.0)
    assert eff.peak_source == "NVIDIA datasheet: H100 Tensor Core GPU (SXM5), 2023"


def test_without_a_peak_mfu_is_unknown(tmp_path):
    cfg = get_workload("digits").config("debug")
    options = TrainOptions(device="cpu", out=tmp_path, quiet=True, max_steps=6)
    eff = train("digits", cfg, options).record.efficiency
    assert eff.mfu is None and eff.peak_source == "peak unknown"
    assert eff.achieved_tflops > 0


def test_on_step_hooks_see_every_global_step(tmp_path):
    seen: list[int] = []
    cfg = get_workload("stocks").config("debug")
    options = TrainOptions(
        device="cpu", out=tmp_path, quiet=True, max_steps=7, on_step=(seen.append,)
    )
    train("stocks", cfg, options)
    assert seen == [1, 2, 3, 4, 5, 6, 7]


class _Exited(Exception):
    pass


def test_gpulab_fail_at_step_ends_the_process_after_that_step(tmp_path, monkeypatch):
    exits: list[tuple[int, int]] = []  # (global step, exit code or -1 for a step)

    def step_done(step: int) -> None:
        exits.append((step, -1))

    def exit_(code: int) -> None:
        exits.append((exits[-1][0], code))
        raise _Exited

    monkeypatch.setattr(gpulab.train.os, "_exit", exit_)
    monkeypatch.setenv("GPULAB_FAIL_AT_STEP", "3")
    cfg = get_workload("stocks").config("debug")
    options = TrainOptions(device="cpu", out=tmp_path, quiet=True, on_step=(step_done,))
    with pytest.raises(_Exited):
        train("stocks", cfg, options)
    assert exits == [(1, -1), (2, -1), (3, -1), (3, 1)]  # exit code 1, right after step 3
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # a restarted worker does not fail
    train("stocks", cfg, TrainOptions(device="cpu", out=tmp_path, quiet=True, max_steps=4))
