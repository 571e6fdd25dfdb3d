"""gpulab probe: peak table, arithmetic, the CPU path end to end, JSON schema, bad input."""

import json
import math

import pytest
import torch

import gpulab.probe as probe_pkg
from gpulab.probe import compute as compute_mod
from gpulab.probe.bandwidth import KiB, MiB, probe_bandwidth
from gpulab.probe.compute import best_by_dtype, probe_compute
from gpulab.probe.peaks import lookup_peak, pcie_gbps, percent_of
from gpulab.probe.report import ceilings, verdict
from gpulab.probe.storage import CHUNK_BYTES, reader_parts

TINY = {
    "matmul_sizes": [64, 128],
    "samples": 2,
    "copy_bytes": 4 * MiB,
    "transfer_sizes": [4 * KiB, 1 * MiB],
    "storage_file_bytes": 2 * MiB,
}


@pytest.mark.parametrize(
    "name, model",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla T4", "T4"),
        ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090"),
    ],
)
def test_peak_table_lookup(name, model):
    peak = lookup_peak(name)
    assert peak is not None and peak.model == model and peak.source


def test_unknown_devices_have_no_peak():
    assert lookup_peak("NVIDIA GeForce RTX 3090") is None
    assert lookup_peak("NVIDIA H100 NVL") is None
    assert lookup_peak("AMD EPYC") is None


def test_peak_values_and_percent_arithmetic():
    h100 = lookup_peak("NVIDIA H100 80GB HBM3")
    assert h100.tflops["bf16"] == 989.4 and h100.tflops["fp8"] == 1978.9
    assert lookup_peak("Tesla T4").tflops["bf16"] is None
    assert percent_of(494.7, h100.tflops["bf16"]) == pytest.approx(50.0, rel=1e-3)
    assert percent_of(1.0, None) is None
    assert pcie_gbps(5, 16) == pytest.approx(63.008)
    assert pcie_gbps(4, 8) == pytest.approx(15.752)
    assert pcie_gbps(None, 16) is None and pcie_gbps(9, 16) is None


def test_cpu_matmul_rates_are_checked_against_float64():
    result = probe_compute(torch.device("cpu"), [64, 96], samples=2, peak=None)
    rows = result["results"]
    assert [(r["dtype"], r["n"]) for r in rows] == [
        ("fp32", 64),
        ("fp32", 96),
        ("bf16", 64),
        ("bf16", 96),
    ]
    for r in rows:
        assert r["check_passed"] and r["tflops_best"] >= r["tflops_median"] >= r["tflops_min"] > 0
        assert r["threads"] == torch.get_num_threads() and r["pct_of_peak"] is None
    assert max(r["rel_error"] for r in rows if r["dtype"] == "fp32") < 1e-5
    assert set(best_by_dtype(result)) == {"fp32", "bf16"}


def test_a_wrong_kernel_fails_its_check(monkeypatch):
    monkeypatch.setattr(compute_mod, "_product", lambda dtype, device: lambda a, b: 1.5 * (a @ b))
    result = probe_compute(torch.device("cpu"), [64], samples=2, peak=None)
    assert not any(r["check_passed"] for r in result["results"])
    assert best_by_dtype(result) == {}


def test_cpu_bandwidth_is_a_host_memory_copy():
    bw = probe_bandwidth(torch.device("cpu"), {}, None, 4 * MiB, [], samples=2)
    assert bw["host_copy"]["counted"] == "read+write" and bw["host_copy"]["bytes"] == 4 * MiB
    assert bw["host_copy"]["gbps_median"] > 0 and bw["threads"] >= 1


def _fake_result(storage=None):
    return {
        "device": "cuda:0",
        "device_name": "NVIDIA H100 80GB HBM3",
        "threads": 16,
        "sample_bytes": 110_000,
        "compute": {
            "results": [
                {
                    "dtype": "bf16",
                    "n": 8192,
                    "tflops_best": 790.0,
                    "check_passed": True,
                    "pct_of_peak": 79.8,
                }
            ],
            "skipped": [],
        },
        "bandwidth": {
            "device_copy": {"gbps_median": 3000.0, "peak_gbps": 3350.0, "pct_of_peak": 89.6},
            "link": {"gen": 5, "width": 16, "theoretical_gbps": 63.0},
            "h2d_pinned": [
                {"bytes": 4096, "gbps_median": 1.0},
                {"bytes": 2**30, "gbps_median": 54.0, "pct_of_link": 85.7},
            ],
            "h2d_pageable": [{"bytes": 2**30, "gbps_median": 7.0, "pct_of_link": 11.1}],
        },
        "storage": storage or {"error": "--dir x does not exist"},
    }


def test_ceilings_are_rate_over_sample_size():
    storage = {"seq_read_cold_gbps": {"median": 1.1}, "seq_read_warm_gbps": {"median": 11.0}}
    ceil = ceilings(_fake_result(storage))
    rates = ceil["samples_per_s"]
    assert rates["storage cold"] == pytest.approx(10_000)
    assert rates["page cache"] == pytest.approx(100_000)
    assert rates["host->GPU pinned"] == pytest.approx(54e9 / 110_000)
    assert rates["host->GPU pageable"] == pytest.approx(7e9 / 110_000)


def test_verdict_names_the_links_and_the_bound():
    result = _fake_result()
    result["ceilings"] = ceilings(result)
    lines = verdict(result)
    assert "bf16 790.0 TFLOP/s (80% of peak)" in lines[0]
    assert "3,000.0 GB/s (read+write), 90% of the datasheet's 3,350.0 GB/s" in lines[1]
    assert (
        "54.0 GB/s to the GPU from pinned memory (86% of PCIe gen5 x16, 63.0 GB/s) but 7.0 GB/s from pageable"
        in lines[2]
    )
    assert lines[3] == "storage not measured: --dir x does not exist"
    assert "bounded by host->GPU pageable" in lines[4]


@pytest.mark.parametrize("file_bytes", [2 * MiB, 128 * MiB, 1024 * MiB + 12_288])
@pytest.mark.parametrize("readers", [1, 3, 16])
def test_concurrent_readers_split_the_file_once(file_bytes, readers):
    parts = reader_parts(file_bytes, readers)
    assert len(parts) == readers
    assert parts[0][0] == 0 and parts[-1][1] == file_bytes
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, no overlap
    assert all(start % CHUNK_BYTES == 0 and end >= start for start, end in parts)


def test_cpu_probe_end_to_end_writes_json(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(probe_pkg, "default_settings", lambda device, quick: TINY)
    out = tmp_path / "probe.json"
    r = run_cli("probe", "--device", "cpu", "--dir", tmp_path, "--json", out, "--threads", "1")
    assert r.code == 0, r.err
    assert "compute: dense matrix multiply" in r.out and "file access" in r.out
    assert "storage in" in r.out and "cap training at" in r.out
    assert "storage: 1 concurrent reader(s), bypass" in r.out  # stages are printed in a log
    assert "probe took" in r.out and "longest stage:" in r.out
    data = json.loads(out.read_text())
    stages = data["stage_seconds"]
    assert "inventory" in stages and "compute: fp32 64x64x64" in stages
    assert any(k.startswith("storage: sequential reads, cold") for k in stages)
    assert all(v >= 0 for v in stages.values())
    assert data["method_version"] == 2 and data["device"] == "cpu" and data["threads"] == 1
    assert (
        data["inventory"]["cpu_logical_cores"] >= 1 and data["inventory"]["dir"]["free_bytes"] > 0
    )
    assert {r["dtype"] for r in data["compute"]["results"]} == {"fp32", "bf16"}
    assert data["bandwidth"]["host_copy"]["gbps_median"] > 0
    storage = data["storage"]
    assert storage["file_bytes"] == 2 * MiB and storage["seq_read_cold_gbps"]["median"] > 0
    rates = data["ceilings"]["samples_per_s"]
    assert set(rates) == {"storage cold", "page cache"} and all(
        math.isfinite(v) and v > 0 for v in rates.values()
    )
    assert rates["storage cold"] == pytest.approx(
        storage["seq_read_cold_gbps"]["median"] * 1e9 / 110_000
    )
    assert len(data["verdict"]) == 4
    assert not list(tmp_path.glob(".gpulab-probe-*"))


def test_missing_dir_is_reported_and_the_rest_measured(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(probe_pkg, "default_settings", lambda device, quick: TINY)
    missing = tmp_path / "nope"
    r = run_cli("probe", "--device", "cpu", "--dir", missing, "--json", tmp_path / "p.json")
    assert r.code == 0
    assert "storage not measured: --dir" in r.out and "does not exist" in r.out
    data = json.loads((tmp_path / "p.json").read_text())
    assert "error" in data["storage"] and data["compute"]["results"]
    assert not missing.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--sample-bytes", "0"], "--sample-bytes must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_probe_bad_options(run_cli, tmp_path, args, message):
    r = run_cli("probe", "--dir", tmp_path, *args)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.cuda
def test_gpu_probe_measures_every_path(tmp_path):
    settings = {**TINY, "matmul_sizes": [1024], "copy_bytes": 64 * MiB}
    data = probe_pkg.run_probe("cuda", directory=tmp_path, settings=settings)
    dtypes = {r["dtype"] for r in data["compute"]["results"]}
    assert {"fp32", "tf32", "fp16", "bf16"} <= dtypes
    assert all(r["check_passed"] for r in data["compute"]["results"])
    bw = data["bandwidth"]
    assert bw["device_copy"]["gbps_median"] > 0 and bw["bidirectional"]["gbps_median"] > 0
    for key in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
        assert [row["bytes"] for row in bw[key]] == TINY["transfer_sizes"]
    assert data["inventory"]["accelerators"][0]["name"] == data["device_name"]


def test_the_header_says_when_fewer_cpus_are_usable_than_the_machine_has():
    from gpulab.probe.report import _usable

    assert _usable({"cpu_logical_cores": 64, "cpu_usable_cores": 4}) == ", 4 usable here"
    assert _usable({"cpu_logical_cores": 16, "cpu_usable_cores": 16}) == ""
    assert _usable({"cpu_logical_cores": 16}) == ""  # a result from before the field existed
