"""torchrun with 2 CPU processes on gloo: the same steps as one process for the same global batch."""

import json

import pytest
import torch

from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_two_gloo_processes_match_one_process(runs_root, torchrun):
    r = torchrun(
        2,
        "train",
        "stocks",
        "--preset",
        "debug",
        "--device",
        "cpu",
        "--out",
        runs_root / "ddp",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run_lines = [line for line in r.stdout.splitlines() if line.startswith("run: ")]
    assert len(run_lines) == 1  # only rank 0 reports and writes
    ddp_dir = runs_root / "ddp" / "stocks"
    (ddp_run,) = [p for p in ddp_dir.iterdir() if p.is_dir()]  # beside it: the torchrun marker
    record = json.loads((ddp_run / "record.json").read_text())
    assert record["options"]["world_size"] == 2 and record["options"]["backend"] == "gloo"

    cfg = get_workload("stocks").config("debug")
    single = train("stocks", cfg, TrainOptions(device="cpu", out=runs_root / "one", quiet=True))
    a, b = _weights(single.run_dir), _weights(ddp_run)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
    assert record["metrics"]["test_mse"] == pytest.approx(
        single.record.metrics["test_mse"], rel=1e-3
    )


def test_under_torchrun_utilisation_is_each_devices_own(runs_root, torchrun):
    # the throughput is the whole job's; each device computes half of it, against its own peak
    args = ("train", "digits", "--preset", "debug", "--max-steps", "6", "--device", "cpu")
    r = torchrun(2, *args, "--out", runs_root / "ddp", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = [p for p in (runs_root / "ddp" / "digits").iterdir() if p.is_dir()]
    record = json.loads((run / "record.json").read_text())
    t, e = record["timing"], record["efficiency"]
    assert t["samples_per_s_per_rank"] == pytest.approx(t["samples_per_s"] / 2)
    assert e["achieved_tflops"] == pytest.approx(
        e["train_flops_per_sample"] * t["samples_per_s_per_rank"] / 1e12
    )
