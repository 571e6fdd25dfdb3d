"""Energy: the RAPL and NVML readers against fake counters, the meter on a fake clock, the
energy of a real run's record and of a bench row. No sleeps: the clock moves when told to."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from gpulab.bench import report, suite
from gpulab.runtime import energy, records
from gpulab.runtime.energy import (
    EnergyMeter,
    NvmlEnergyCounter,
    NvmlPowerCounter,
    RaplCounter,
    cpu_counter,
    gpu_counter,
    nvml_counter,
)
from gpulab.runtime.records import EnergyReading
from helpers import FakeClock, free_port

CPU = torch.device("cpu")


def _write(path: Path, value) -> None:
    """Replace a counter file at once, as the kernel shows a new value (a reader in another
    thread never sees it half written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def _domain(root: Path, name: str, label: str, uj: int, max_uj: int = 2**40) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    _write(d / "energy_uj", uj)
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


@pytest.fixture
def powercap(tmp_path) -> Path:
    """A /sys/class/powercap with two packages (the second wraps at 10 J), a core subdomain of
    the first and a platform (psys) domain: only the packages count."""
    root = tmp_path / "powercap"
    _domain(root, "intel-rapl:0", "package-0", 1_000_000)
    _domain(root, "intel-rapl:1", "package-1", 9_500_000, max_uj=10_000_000)
    _domain(root, "intel-rapl:0:0", "core", 5_000_000)
    _domain(root, "intel-rapl:2", "psys", 7_000_000)
    return root


def _set(root: Path, uj: dict[str, int]) -> None:
    for domain, value in uj.items():
        _write(root / domain / "energy_uj", value)


# -- RAPL -----------------------------------------------------------------------------------------


def test_rapl_sums_the_packages_and_counts_a_wrap(powercap):
    counter = RaplCounter(powercap)
    assert [d.name for d in counter.domains] == ["intel-rapl:0", "intel-rapl:1"]
    counter.begin(0.0)
    # package 0: +3 J; package 1 wraps at 10 J: 9.5 -> 10 -> 1.5, +2 J; the core and psys
    # domains move by 100 J and 50 J, counted already in the package or not a package at all
    _set(powercap, {"intel-rapl:0": 4_000_000, "intel-rapl:1": 1_500_000})
    _set(powercap, {"intel-rapl:0:0": 105_000_000, "intel-rapl:2": 57_000_000})
    assert counter.end(1.0) == pytest.approx(5.0)


def test_rapl_polls_so_that_several_wraps_in_a_segment_all_count(powercap):
    counter = RaplCounter(powercap)
    counter.begin(0.0)
    for uj in (4_000_000, 9_000_000, 3_000_000):  # +4.5 J (a wrap), +5 J, +4 J (a wrap)
        _set(powercap, {"intel-rapl:1": uj})
        counter.poll(0.0)
    assert counter.end(0.0) == pytest.approx(13.5)
    counter.begin(0.0)  # a new segment starts from zero
    assert counter.end(0.0) == 0.0


def test_rapl_says_why_it_cannot_measure(tmp_path, powercap, monkeypatch):
    absent = tmp_path / "absent"
    assert cpu_counter(absent) == f"no {absent} (a VM without RAPL, or not Linux)"
    only_psys = tmp_path / "laptop"
    _domain(only_psys, "intel-rapl:0", "psys", 0)
    _domain(only_psys, "intel-rapl:0:0", "package-0", 0)  # not a top-level domain
    assert (
        cpu_counter(only_psys) == f"no RAPL package domain under {only_psys} (a VM without RAPL?)"
    )
    locked = powercap / "intel-rapl:1" / "energy_uj"
    read_text = Path.read_text

    def root_only(path, *args, **kwargs):  # what recent kernels do for a user (root reads all)
        if path == locked:
            raise PermissionError(13, "Permission denied")
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", root_only)
    assert cpu_counter(powercap) == (
        f"{locked} is readable by root only (Linux restricts RAPL since CVE-2020-8694); run as "
        "root or make it readable to measure CPU energy"
    )


# -- NVML -----------------------------------------------------------------------------------------


class FakeNvml:
    """pynvml's calls that energy.py makes, on one fake GPU."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj: int | None = 5_000_000, power_mw: int | None = 100_000):
        self.energy_mj, self.power_mw = energy_mj, power_mw  # None: not supported
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        assert handle == "gpu0"
        if self.energy_mj is None:
            raise self.NVMLError("Not Supported")
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle):
        assert handle == "gpu0"
        if self.power_mw is None:
            raise self.NVMLError("Not Supported")
        return self.power_mw


def test_nvml_total_energy_counter_over_a_segment():
    nvml, clock = FakeNvml(), FakeClock()
    counter = nvml_counter(nvml, "gpu0")
    assert isinstance(counter, NvmlEnergyCounter)
    meter = EnergyMeter(counter, "no cpu here", clock=clock, poll_s=3600)
    meter.start()
    clock.advance(10.0)
    nvml.energy_mj += 2_500_000  # 2.5 kJ in 10 s
    gpu = meter.stop()["gpu"]
    assert gpu == EnergyReading(
        source="nvml-total-energy", joules=2500.0, seconds=10.0, watts=250.0, reason=None
    )
    meter.close()
    assert nvml.shutdowns == 1


def test_without_an_energy_counter_power_samples_are_integrated():
    nvml = FakeNvml(energy_mj=None)
    counter = nvml_counter(nvml, "gpu0")
    assert isinstance(counter, NvmlPowerCounter)
    counter.begin(0.0)  # 100 W
    for t, watts in ((1.0, 200), (3.0, 300)):
        nvml.power_mw = watts * 1000
        counter.poll(t)
    nvml.power_mw = 100_000  # the end's own sample
    # trapezoids: 1 s x 150 W + 2 s x 250 W + 1 s x 200 W
    assert counter.end(4.0) == pytest.approx(150 + 500 + 200)


def test_power_samples_through_the_meter_on_a_fake_clock():
    nvml, clock = FakeNvml(energy_mj=None, power_mw=50_000), FakeClock()
    meter = EnergyMeter(nvml_counter(nvml, "gpu0"), "none", clock=clock, poll_s=3600)
    meter.start()
    clock.advance(8.0)
    nvml.power_mw = 150_000
    gpu = meter.stop()["gpu"]
    assert gpu.source == "nvml-power-samples" and gpu.joules == pytest.approx(8.0 * 100)
    assert gpu.watts == pytest.approx(100.0)


def test_a_gpu_without_energy_or_power_gives_the_reason_and_releases_nvml():
    nvml = FakeNvml(energy_mj=None, power_mw=None)
    assert nvml_counter(nvml, "gpu0") == (
        "NVML reads neither energy nor power of this GPU (Not Supported)"
    )
    assert nvml.shutdowns == 1


def test_a_cpu_run_reads_no_nvml():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"NVML called: {name}")

    assert gpu_counter(CPU, nvml=Untouchable()) == "device is cpu: no GPU energy to read"


# -- the meter ------------------------------------------------------------------------------------


class Machine:
    """A fake clock and a fake package drawing `watts` while the clock moves."""

    def __init__(self, root: Path, watts: float):
        self.clock, self.root, self.watts = FakeClock(), root, watts
        self.uj = 0
        _domain(root, "intel-rapl:0", "package-0", 0)

    def run(self, seconds: float, watts: float | None = None) -> None:
        self.clock.advance(seconds)
        self.uj += round(seconds * (self.watts if watts is None else watts) * 1e6)
        _write(self.root / "intel-rapl:0" / "energy_uj", self.uj)


def test_the_meter_adds_segments_and_leaves_out_what_runs_between(tmp_path):
    m = Machine(tmp_path / "powercap", watts=100.0)
    meter = EnergyMeter("device is cpu", RaplCounter(m.root), clock=m.clock, poll_s=3600)
    m.run(7.0, watts=500.0)  # before the window
    meter.start()
    m.run(10.0)
    meter.stop()
    m.run(50.0, watts=300.0)  # an evaluation
    meter.start()
    m.run(5.0)
    cpu = meter.stop()["cpu"]
    assert cpu == EnergyReading(
        source="rapl", joules=1500.0, seconds=15.0, watts=100.0, reason=None
    )
    result = meter.result(samples=300)
    assert result.joules_per_sample == pytest.approx(5.0)
    assert result.gpu == EnergyReading(
        source=None, joules=None, seconds=15.0, watts=None, reason="device is cpu"
    )


def test_a_counter_that_fails_during_the_run_becomes_its_reason(tmp_path):
    m = Machine(tmp_path / "powercap", watts=100.0)
    meter = EnergyMeter("device is cpu", RaplCounter(m.root), clock=m.clock, poll_s=3600)
    meter.start()
    m.run(1.0)
    (m.root / "intel-rapl:0" / "energy_uj").unlink()
    cpu = meter.stop()["cpu"]
    assert cpu.source is None and cpu.joules is None and cpu.watts is None
    assert cpu.reason.startswith(f"{m.root / 'intel-rapl:0' / 'energy_uj'} is unreadable (")
    assert cpu.reason.endswith("(during the run)")
    assert meter.result(samples=10).joules_per_sample is None


def test_a_meter_that_never_started_measured_nothing(tmp_path):
    m = Machine(tmp_path / "powercap", watts=100.0)
    meter = EnergyMeter("device is cpu", RaplCounter(m.root), clock=m.clock)
    meter.close()
    assert meter.readings()["cpu"].reason == "no window was measured (the run timed no step)"


# -- torchrun: the processes' readings summed ------------------------------------------------------


class Fixed(energy.Counter):
    """A counter whose every segment used `joules`."""

    source = "fake"

    def __init__(self, joules: float):
        self.joules = joules

    def end(self, t: float) -> float:
        return self.joules


def _sum_in_two_processes(rank: int, port: int, out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        clock = FakeClock()
        # each process its own GPU; the CPU packages by the machine's first process only
        both = EnergyMeter(
            Fixed(10.0 * (rank + 1)), Fixed(5.0) if rank == 0 else "other", clock=clock
        )
        one = EnergyMeter(Fixed(7.0) if rank == 0 else "NVML is not available", "x", clock=clock)
        for meter in (both, one):
            meter.start()
            clock.advance(2.0)
            meter.close()
        summed = [energy.summed_over_processes(m, local_rank=rank) for m in (both, one)]
        if rank == 0:
            out.write_text(
                json.dumps([{k: dataclasses.asdict(v) for k, v in s.items()} for s in summed])
            )
    finally:
        dist.destroy_process_group()


def test_under_torchrun_the_processes_readings_are_summed(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "summed.json"
    mp.spawn(_sum_in_two_processes, args=(free_port(), out), nprocs=2, join=True)
    both, one = json.loads(out.read_text())
    assert both["gpu"] == {
        "source": "fake", "joules": 30.0, "seconds": 2.0, "watts": 15.0, "reason": None
    }  # fmt: skip
    assert both["cpu"]["joules"] == 5.0 and both["cpu"]["reason"] is None  # one machine
    assert one["gpu"] == {
        "source": None, "joules": None, "seconds": 2.0, "watts": None,
        "reason": "measured by 1 of 2 processes only",
    }  # fmt: skip
    assert one["cpu"]["reason"] == "x" and one["cpu"]["joules"] is None


# -- a real run's record --------------------------------------------------------------------------


def test_a_cpu_training_run_records_its_energy_or_why_not(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path / "no-powercap")  # as on this VM
    r = run_cli(
        "train", "stocks", "--preset", "debug", "--device", "cpu", "--quiet",
        "--out", tmp_path / "runs",
    )  # fmt: skip
    assert r.code == 0, r.err
    record = json.loads(next((tmp_path / "runs").glob("stocks/*/record.json")).read_text())
    e, timing = record["energy"], record["timing"]
    assert e["gpu"] == {
        "source": None, "joules": None, "seconds": e["gpu"]["seconds"], "watts": None,
        "reason": "device is cpu: no GPU energy to read",
    }  # fmt: skip
    assert e["cpu"]["source"] is None and e["cpu"]["joules"] is None
    assert e["cpu"]["reason"] == f"no {tmp_path / 'no-powercap'} (a VM without RAPL, or not Linux)"
    assert e["joules_per_sample"] is None
    assert e["samples"] == timing["timed_steps"] * timing["global_batch"] == 48 * 64
    # the window is the timed steps: warm-up and the final evaluation are outside it
    assert 0 < e["cpu"]["seconds"] <= timing["train_s"]
    assert records.read_record(next((tmp_path / "runs").glob("stocks/*"))).energy.samples == 3072


def test_a_record_without_energy_reads_back_with_none(tmp_path, write_record_json):
    write_record_json(tmp_path / "run")
    assert records.read_record(tmp_path / "run").energy is None


# -- bench ----------------------------------------------------------------------------------------


def _reading(source=None, joules=None, seconds=10.0, reason=None) -> EnergyReading:
    watts = joules / seconds if joules is not None else None
    return EnergyReading(source=source, joules=joules, seconds=seconds, watts=watts, reason=reason)


def _with_energy(old_record, gpu: EnergyReading, cpu: EnergyReading, samples: int):
    rec = records.record_from_json(old_record("training_stocks"), Path("record.json"))
    return dataclasses.replace(rec, energy=energy.energy_of({"gpu": gpu, "cpu": cpu}, samples))


def test_a_bench_row_gives_energy_per_sample_and_each_source(old_record):
    recs = [
        _with_energy(
            old_record,
            _reading("nvml-total-energy", joules=gpu_j),
            _reading(reason="no /sys/class/powercap (a VM without RAPL, or not Linux)"),
            samples=1000,
        )
        for gpu_j in (2000.0, 3000.0, 2500.0)  # olympic mean: 2500 J
    ]
    row = suite._measures(recs)
    assert row["energy"] == {
        "joules_per_sample": pytest.approx(2.5),
        "watts": pytest.approx(250.0),
        "sources": {
            "gpu": {
                "source": "nvml-total-energy",
                "joules_per_sample": pytest.approx(2.5),
                "watts": pytest.approx(250.0),
                "reason": None,
            },
            "cpu": {
                "source": None,
                "joules_per_sample": None,
                "watts": None,
                "reason": "no /sys/class/powercap (a VM without RAPL, or not Linux)",
            },
        },
    }
    full = {"workload": "cnn", "device": "cuda", "failed": [], **row}
    assert report._energy(full) == "2.5 J, 250 W (GPU)"
    assert report.energy_notes([full]) == [
        "Energy not measured — CPU packages: no /sys/class/powercap (a VM without RAPL, or not "
        "Linux)."
    ]


def test_a_bench_row_adds_the_measured_sources(old_record):
    rec = _with_energy(
        old_record, _reading("nvml-total-energy", 30.0), _reading("rapl", 10.0), samples=20_000
    )
    e = suite._measures([rec])["energy"]
    assert e["joules_per_sample"] == pytest.approx(40.0 / 20_000) and e["watts"] == 4.0
    assert e["sources"]["cpu"]["joules_per_sample"] == pytest.approx(0.0005)
    assert report._energy({"energy": e}) == "2 mJ, 4 W (GPU+CPU)"


def test_a_source_measured_in_some_repeats_only_says_so(old_record):
    cpu = _reading(reason="no RAPL")
    recs = [
        _with_energy(old_record, _reading("nvml-total-energy", 50.0), cpu, samples=100),
        _with_energy(old_record, _reading(reason="NVML is not available"), cpu, samples=100),
    ]
    gpu = suite._measures(recs)["energy"]["sources"]["gpu"]
    assert gpu == {
        "source": "nvml-total-energy",
        "joules_per_sample": 0.5,
        "watts": 5.0,
        "reason": "measured in 1 of 2 runs",
    }


def test_a_bench_row_of_records_without_energy_says_so(old_record):
    rec = records.record_from_json(old_record("training_stocks"), Path("record.json"))
    e = suite._measures([rec])["energy"]
    assert e["joules_per_sample"] is None and e["watts"] is None
    assert e["sources"]["gpu"]["reason"] == e["sources"]["cpu"]["reason"] == suite.NO_ENERGY
    assert report._energy({"energy": e}) == "not measured"


def test_cpu_rows_need_no_gpu_reason_in_the_notes():
    row = {
        "device": "cpu",
        "energy": {
            "joules_per_sample": None,
            "watts": None,
            "sources": {
                "gpu": {"source": None, "joules_per_sample": None, "watts": None, "reason": "g"},
                "cpu": {"source": None, "joules_per_sample": None, "watts": None, "reason": "c"},
            },
        },
    }
    assert report.energy_notes([row, row]) == ["Energy not measured — CPU packages: c."]


# -- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_a_cuda_run_records_gpu_energy(tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.registry import get_workload

    options = TrainOptions(device="cuda", out=tmp_path, quiet=True, compile=False)
    cfg = get_workload("cnn").config("debug", {"steps_per_epoch": "60"})
    e = train("cnn", cfg, options).record.energy
    assert e.gpu.source in ("nvml-total-energy", "nvml-power-samples"), e.gpu.reason
    assert e.gpu.joules > 0 and e.gpu.watts > 0 and e.gpu.seconds > 0
    assert e.joules_per_sample > 0 and e.samples == 58 * 8
