import pytest
import torch
from torch.utils.data import TensorDataset

from gpulab.data import LoaderBatches, TensorBatches
from gpulab.runtime import GpulabError, device, resolve_device, resolve_precision
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.files import atomic_write, atomic_write_text
from gpulab.runtime.timing import Timeline, summarize_steps
from gpulab.workloads.registry import get_workload


def test_cpu_device_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    here = "cuda" if torch.cuda.is_available() else "mps" if device._mps_available() else "cpu"
    assert resolve_device("auto").type == here


@pytest.mark.parametrize(
    "cuda, mps, want",
    [(True, True, torch.device("cuda", 1)), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(device, "_mps_available", lambda: mps)
    assert resolve_device("auto") == torch.device(want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_gpu_names_what_is_available():
    with pytest.raises(GpulabError, match=r"no CUDA GPU is visible here; available: cpu"):
        resolve_device("cuda")


def test_unknown_device_is_refused():
    with pytest.raises(GpulabError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_precision_policy_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu).autocast_dtype is None
    bf16 = resolve_precision("bf16", cpu)
    assert bf16.autocast_dtype == torch.bfloat16 and not bf16.uses_grad_scaler
    with pytest.raises(GpulabError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(GpulabError, match="tf32 needs an NVIDIA GPU"):
        resolve_precision("tf32", cpu)
    with pytest.raises(GpulabError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", cpu)


def test_fp32_turns_tf32_off():
    resolve_precision("fp32", torch.device("cpu"))
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_step_summary_is_total_samples_over_total_time():
    stats = summarize_steps([1.0, 2.0, 3.0, 4.0], samples_per_step=10)
    assert stats.total_s == 10.0
    assert stats.samples == 40
    assert stats.samples_per_s == pytest.approx(4.0)
    assert stats.step_median_s == pytest.approx(2.5)
    assert stats.step_iqr_s == pytest.approx(1.5)


def test_timeline_marks_are_ordered_seconds():
    tl = Timeline(torch.device("cpu"))
    marks = [tl.mark() for _ in range(3)]
    seconds = tl.seconds()
    assert marks == [0, 1, 2]
    assert seconds[0] == 0.0 and seconds[0] <= seconds[1] <= seconds[2]


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_tensor_batches_split_each_global_batch_over_ranks():
    x = torch.arange(40.0).unsqueeze(1)
    y = torch.arange(40.0)
    one = list(TensorBatches((x, y), 8, DistInfo(1, 0, 0, None), seed=1).epoch(2))
    ranks = [
        list(TensorBatches((x, y), 8, DistInfo(2, r, r, "gloo"), seed=1).epoch(2)) for r in (0, 1)
    ]
    assert len(one) == 5
    for step, (bx, by) in enumerate(one):
        joined = torch.cat([ranks[0][step][1], ranks[1][step][1]])
        assert torch.equal(joined, by)
        assert torch.equal(bx[:, 0], by)
    # a resumed epoch starts at its step with the same batches
    later = list(TensorBatches((x, y), 8, DistInfo(1, 0, 0, None), seed=1).epoch(2, start_step=3))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(later, one[3:]))
    # another epoch, another order
    other = list(TensorBatches((x, y), 8, DistInfo(1, 0, 0, None), seed=1).epoch(3))
    assert not torch.equal(other[0][1], one[0][1])


def test_batch_must_split_evenly_over_ranks():
    x = torch.zeros(10, 1)
    with pytest.raises(GpulabError, match="does not split evenly over 3 processes"):
        TensorBatches((x,), 8, DistInfo(3, 0, 0, "gloo"), seed=0)


def test_loader_batches_use_a_distributed_sampler_per_epoch():
    ds = TensorDataset(torch.arange(32.0))
    cpu = torch.device("cpu")
    ranks = [LoaderBatches(ds, 8, DistInfo(2, r, r, "gloo"), seed=0, device=cpu) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == 4
    assert ranks[0].ready_ahead == 0  # no worker processes: nothing is made in advance
    seen = torch.cat([b[0] for lb in ranks for b in lb.epoch(0)])
    assert sorted(seen.tolist()) == list(range(32))  # the ranks share the epoch without overlap
    first = [b[0] for b in ranks[0].epoch(0)]
    again = [b[0] for b in ranks[0].epoch(0)]
    other = [b[0] for b in ranks[0].epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    resumed = [b[0] for b in ranks[0].epoch(0, start_step=2)]
    assert all(torch.equal(a, b) for a, b in zip(resumed, first[2:]))


def test_config_overrides_are_typed():
    stocks = get_workload("stocks")
    cfg = stocks.config("debug", {"hidden": "8,4", "epochs": "3", "data": "none"})
    assert cfg.hidden == (8, 4) and cfg.epochs == 3 and cfg.data is None
    with pytest.raises(GpulabError, match="unknown setting 'depth'"):
        stocks.config("debug", {"depth": "3"})
    with pytest.raises(GpulabError, match="--set epochs=many: epochs must be int"):
        stocks.config("debug", {"epochs": "many"})
    with pytest.raises(GpulabError, match="unknown preset 'huge'"):
        stocks.config("huge")


def test_cpu_threads_default_to_omp_setting_or_physical_cores(monkeypatch):
    import psutil

    from gpulab.runtime.device import default_cpu_threads, set_cpu_threads, usable_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert default_cpu_threads() == 1 and set_cpu_threads(None) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert default_cpu_threads() == min(psutil.cpu_count(logical=False) or 1, usable_cores())
        assert set_cpu_threads(2) == 2
    finally:
        torch.set_num_threads(before)


def test_loader_workers_share_the_usable_cores_among_the_ranks_on_a_machine(monkeypatch):
    import os

    from gpulab.data.batches import loader_workers
    from gpulab.runtime.device import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert usable_cores() == 16  # the CPU set this process may run on
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None) == 16  # one per core
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(None) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers(None) == 16  # at most 16 a process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert loader_workers(None) == 1
    assert loader_workers(3) == 3 and loader_workers(0) == 0  # the user's choice stands


def test_usable_cores_keep_to_a_containers_cpu_limit(monkeypatch, tmp_path):
    import os

    import gpulab.runtime.device as device

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    monkeypatch.setattr(device, "CPU_QUOTA_FILES", ((str(v2),), (str(quota), str(period))))
    assert device.usable_cores() == 16  # neither file: no limit
    quota.write_text("250000\n")
    period.write_text("100000\n")
    assert device.usable_cores() == 3  # cgroup v1: 2.5 CPUs, rounded up
    v2.write_text("max 100000\n")
    assert device.usable_cores() == 16  # cgroup v2 says unlimited, and it comes first
    v2.write_text("400000 100000\n")
    assert device.usable_cores() == 4
    v2.write_text("3200000 100000\n")
    assert device.usable_cores() == 16  # a quota above the CPU set: the CPU set


def test_rates_read_as_people_write_them():
    from gpulab.runtime.records import rate_text

    assert [rate_text(x) for x in (0.5, 1.264, 21.92, 306.2, 21_924.4, 902_938.0)] == [
        "0.5",
        "1.26",
        "21.9",
        "306",
        "21,924",
        "902,938",
    ]


def test_a_cuda_device_becomes_the_current_one(monkeypatch):
    # timing events, side streams and CUDA graph captures go to the current device: with cuda:0
    # current, work on cuda:1 would be timed and captured on the wrong GPU
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and chosen == [1]


def test_a_full_disk_while_writing_keeps_the_old_file_and_says_so(tmp_path):
    import errno

    path = tmp_path / "record.json"
    path.write_text("old")

    def write(f):
        f.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(GpulabError, match="cannot write .*No space left on device; free space"):
        atomic_write(path, write)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_first_line_of_an_error_is_its_first_non_empty_line_or_its_type():
    from gpulab.runtime.errors import first_line

    assert first_line(ValueError("\n  bad header\nTraceback ...")) == "bad header"
    assert first_line(OSError()) == "OSError"
    assert first_line(RuntimeError("   ")) == "RuntimeError"


def test_nvml_facts_are_of_the_gpu_cuda_names_not_of_nvml_index(monkeypatch):
    """CUDA and NVML number GPUs differently (CUDA_VISIBLE_DEVICES): the environment's NVML
    facts, like the energy counter, come from the handle of the device's UUID."""
    import sys
    from types import SimpleNamespace

    from gpulab.runtime.environment import nvml_device

    asked = []

    class NVMLError(Exception):
        pass

    def by_uuid(uuid):
        asked.append(uuid)
        return "handle"

    def no_index(i):
        raise AssertionError("looked up by NVML index")

    fake = SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_FEATURE_ENABLED=1,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid, nvmlDeviceGetHandleByIndex=no_index,
        nvmlSystemGetDriverVersion=lambda: "999.1",
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
        **{n: (lambda h, *a: 1) for n in (
            "nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo",
            "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
            "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkWidth",
            "nvmlDeviceGetNvLinkState",
        )},
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    props = SimpleNamespace(uuid="5c1e1a2b-0000-4000-8000-000000000003")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    facts = nvml_device(torch.device("cuda", 0))
    assert asked == ["GPU-5c1e1a2b-0000-4000-8000-000000000003"]
    assert facts["driver_version"] == "999.1" and facts["power_limit_w"] == 700.0
