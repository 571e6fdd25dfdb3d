"""gpulab share: spec parsing, the multiprogram metrics, the start barrier, and whole runs of
tiny jobs in CPU timeslice and partition (failures, memory refusal, modes the device lacks)."""

import json
import os
import sys
import threading
import types
from pathlib import Path

import pytest

import gpulab.share.placement as placement
import gpulab.share.run as share_run
import gpulab.train
from gpulab.runtime.errors import GpulabError
from gpulab.share import metrics
from gpulab.share.jobs import parse_jobs, parse_spec
from gpulab.share.placement import Placement, cpu_placements
from gpulab.share.results import build_results
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload

TINY = ("--preset", "debug", "--set", "epochs=1", "--quiet")


# -- JOB specs ---------------------------------------------------------------------------------


def test_a_spec_is_copies_workload_and_settings():
    assert parse_spec("2xcnn:model=resnet18,batch_size=64") == (
        2, "cnn", {"model": "resnet18", "batch_size": "64"},
    )  # fmt: skip
    assert parse_spec("stocks") == (1, "stocks", {})
    jobs = parse_jobs(["2xstocks", "digits:batch_size=32", "stocks"], "debug", {})
    assert [j.id for j in jobs] == ["stocks#1", "stocks#2", "digits#1", "stocks#3"]
    assert jobs[2].settings == {"batch_size": "32"} and jobs[2].spec == "digits:batch_size=32"
    assert jobs[0].key == jobs[3].key != jobs[2].key  # one isolated run serves both stocks


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "no JOB given"),
        (["2xnope"], "unknown workload 'nope'; choose one of stocks, style, caption"),
        (["stocks:speed=9"], "unknown setting 'speed' for stocks; valid keys: "),
        (["stocks:epochs"], "'epochs' is not KEY=VALUE"),
        (["0xstocks"], "asks for 0 copies"),
    ],
)
def test_bad_specs_name_the_problem(specs, message):
    with pytest.raises(GpulabError, match=message):
        parse_jobs(specs, "debug", {})


# -- metrics on fixed inputs -------------------------------------------------------------------


def test_metrics_match_hand_computed_values():
    nps = [[0.5, 0.8], [0.6, 0.6]]  # two repeats of two jobs
    fig = metrics.set_figures(nps)
    assert fig["stp"] == pytest.approx((1.3 + 1.2) / 2)
    assert fig["antt"] == pytest.approx(((2 + 1.25) / 2 + 1 / 0.6) / 2)
    assert fig["fairness"] == pytest.approx((0.625 + 1.0) / 2)
    # mean 1.25, sd 0.0707107, se 0.05, t(0.975, 1 df) = 12.7062
    assert fig["stp_interval"] == pytest.approx([1.25 - 0.63531, 1.25 + 0.63531], abs=1e-4)
    assert metrics.mean_interval([1.0]) is None
    assert metrics.normalised_progress(200.0, 50.0) == 0.25
    assert metrics.conclusion(1.4, 0.61) == (
        "sharing raised total throughput 1.40x while the slowest job ran at 0.61 of its "
        "isolated speed"
    )
    assert metrics.conclusion(0.8, 0.3).startswith("sharing lowered total throughput 0.80x")


def test_the_modes_conclusion_names_a_best_mode_only_outside_the_noise():
    two = {"timeslice": (1.81, 0.88, [1.75, 1.87]), "partition": (1.98, 0.98, [1.90, 2.06])}
    assert metrics.modes_conclusion(two) == (
        "partition gave the highest total throughput (STP 1.98, against 1.81 under timeslice); "
        "the slowest job kept 0.98 (partition) and 0.88 (timeslice) of its isolated speed"
    )
    overlapping = {**two, "partition": (1.98, 0.98, [1.27, 2.69])}  # 1.27 <= timeslice's 1.87
    assert metrics.modes_conclusion(overlapping).startswith(
        "the modes' total throughput is the same within the noise of the repeats (STP 1.98 under "
        "partition and 1.81 under timeslice); the slowest job kept 0.98 (partition) and 0.88"
    )
    three = {k: (v[0], v[1], None) for k, v in two.items()} | {"mps": (2.10, 0.70, None)}
    assert metrics.modes_conclusion(three).startswith(
        "mps gave the highest total throughput (STP 2.10, against 1.98 under partition and 1.81 "
        "under timeslice; one repeat: noise unknown); the slowest job kept 0.70 (mps), 0.98 "
        "(partition) and 0.88 (timeslice)"
    )
    one = metrics.modes_conclusion(
        {"timeslice": (1.4, 0.61, None), "partition": (None, None, None)}
    )
    assert one == (
        "only timeslice measured a job: sharing raised total throughput 1.40x while the slowest "
        "job ran at 0.61 of its isolated speed; no job was measured under partition"
    )
    none = metrics.modes_conclusion({"timeslice": (None, None, None)})
    assert none.startswith("no job finished both alone and shared in any mode")


def _outcome(rate, error=None):
    return {"samples_per_s": rate, "timed_s": 1.0, "turnaround_s": 2.0, "run_dir": "r",
            "peak_memory_bytes": 100, "error": error, "cpus": [0]}  # fmt: skip


def test_a_failed_job_is_left_out_of_the_set():
    jobs = parse_jobs(["stocks", "digits", "2xstocks:seed=3"], "debug", {})
    isolated = {jobs[0].key: [_outcome(100.0)], jobs[1].key: [_outcome(40.0)],
                jobs[2].key: [_outcome(100.0)]}  # fmt: skip
    shared = {"stocks#1": [_outcome(50.0)], "digits#1": [_outcome(30.0)],
              "stocks#2": [_outcome(25.0)], "stocks#3": [_outcome(None, "boom")]}  # fmt: skip
    res = build_results(jobs, isolated, shared, [Placement(threads=1)] * 4)
    rows = {r["id"]: r for r in res["jobs"]}
    assert rows["stocks#3"]["failed"] and rows["stocks#3"]["error"] == "boom"
    assert rows["stocks#3"]["np"] is None and rows["stocks#1"]["np"] == [0.5]
    assert res["set"]["stp"] == pytest.approx(0.5 + 0.75 + 0.25)
    assert res["set"]["antt"] == pytest.approx((2 + 4 / 3 + 4) / 3)
    assert res["set"]["fairness"] == pytest.approx(0.25 / 0.75)
    assert res["set"]["aggregate_samples_per_s"] == pytest.approx(105.0)
    assert res["set"]["aggregate_vs_best_isolated"] == pytest.approx(1.05)
    assert res["conclusion"].endswith(
        "1.50x while the slowest job ran at 0.25 of its isolated speed"
    )


# -- placement ---------------------------------------------------------------------------------


def test_cpu_placements_split_the_usable_cores(monkeypatch):
    monkeypatch.setattr(placement, "usable_cpu_list", lambda: [0, 1, 2, 3, 4])
    assert [p.cpus for p in cpu_placements("partition", 2)] == [(0, 1), (2, 3)]
    assert [p.threads for p in cpu_placements("timeslice", 2)] == [2, 2]
    assert [p.threads for p in cpu_placements("timeslice", 7)] == [1] * 7
    with pytest.raises(GpulabError, match="6 jobs need 6 cores, 5 are usable"):
        cpu_placements("partition", 6)


def test_without_mig_partition_says_how_an_administrator_enables_it(monkeypatch):
    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetMigMode=lambda h: (0, 0),
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with pytest.raises(GpulabError, match=r"MIG is not enabled.*nvidia-smi -i 0 -mig 1.*mig -cgi"):
        placement.mig_instances()


def test_mps_without_its_control_binary_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(placement.shutil, "which", lambda name: None)
    with (
        pytest.raises(GpulabError, match="needs nvidia-cuda-mps-control"),
        placement.mps_daemon(tmp_path),
    ):
        pass


@pytest.fixture
def fake_mps(tmp_path, monkeypatch):
    """A stand-in nvidia-cuda-mps-control on PATH that logs how it was called: `-d` starts the
    daemon, a `quit` on stdin stops it; it fails to start where FAKE_MPS_FAIL is set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "mps.log"
    script = bin_dir / "nvidia-cuda-mps-control"
    script.write_text(
        "#!/bin/sh\n"
        'if [ -n "$FAKE_MPS_FAIL" ]; then echo "An instance of this daemon is already running" >&2; exit 1; fi\n'
        'if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$FAKE_MPS_LOG"; exit 0; fi\n'
        'read cmd; echo "$cmd" >> "$FAKE_MPS_LOG"\n'
    )  # fmt: skip
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_LOG", str(log))
    return log


def test_the_mps_daemon_is_private_and_stopped_when_the_jobs_are_interrupted(
    fake_mps, tmp_path, monkeypatch
):
    def release(children, barrier):  # Ctrl-C while the first job waits at the barrier
        raise KeyboardInterrupt

    monkeypatch.setattr(share_run, "_release", release)
    jobs = parse_jobs(["2xstocks"], "debug", {})
    options = share_run.ShareOptions(device="cuda", mode="mps", quiet=True)
    where = [Placement(mps_threads_pct=50)] * 2
    with pytest.raises(KeyboardInterrupt):
        share_run._measure(jobs, where, "mps", options, "cuda", tmp_path / "out")
    mps = tmp_path / "out" / "mps"
    assert fake_mps.read_text().splitlines() == [f"start {mps / 'pipe'} {mps / 'log'}", "quit"]


def test_an_mps_daemon_that_cannot_start_is_a_one_line_error(fake_mps, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    with pytest.raises(GpulabError) as e, placement.mps_daemon(tmp_path):
        raise AssertionError("the jobs must not run without their daemon")
    assert str(e.value) == (
        "cannot start the MPS daemon (An instance of this daemon is already running); check "
        "permissions or use --mode timeslice"
    )


# -- the start barrier -------------------------------------------------------------------------


def test_a_job_at_the_start_barrier_takes_no_step_before_go(tmp_path, monkeypatch):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("GPULAB_START_BARRIER", str(barrier))
    go_at_first_step: list[bool] = []
    done = threading.Event()

    def parent() -> None:  # writes go once the job says it is ready
        while not done.is_set():
            if any(barrier.glob("ready-*")):
                (barrier / "go").touch()
                return
            done.wait(0.01)

    def first_step(step: int) -> None:
        if step == 1:
            go_at_first_step.append((barrier / "go").exists())

    thread = threading.Thread(target=parent)
    thread.start()
    try:
        cfg = get_workload("stocks").config("debug")
        opts = TrainOptions(
            device="cpu", out=tmp_path, quiet=True, max_steps=3, on_step=(first_step,)
        )
        train("stocks", cfg, opts)
    finally:
        done.set()
        thread.join()
    assert go_at_first_step == [True]


def test_the_start_barrier_gives_up_without_go(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULAB_START_BARRIER", str(tmp_path))
    with pytest.raises(GpulabError, match="no start signal"):
        gpulab.train._wait_at_start_barrier(timeout_s=0)
    assert len(list(tmp_path.glob("ready-*"))) == 1


# -- whole runs through the command ------------------------------------------------------------


def _summary(result) -> dict:
    return json.loads(result.out.strip().splitlines()[-1])


def _check_figures(res: dict) -> None:
    """The set's figures follow from the jobs' NP in the file."""
    nps = [j["np"][0] for j in res["jobs"] if not j["failed"]]
    for job in res["jobs"]:
        if not job["failed"]:
            iso, sh = job["isolated"]["samples_per_s"][0], job["shared"]["samples_per_s"][0]
            assert job["np"] == [sh / iso] and job["np_mean"] > 0  # no bound: NP is timed
            assert job["shared"]["turnaround_s"][0] > 0 and job["peak_memory_bytes"] > 0
    assert res["set"]["stp"] == sum(nps)
    assert res["set"]["antt"] == pytest.approx(sum(1 / n for n in nps) / len(nps))
    assert res["set"]["fairness"] == pytest.approx(min(nps) / max(nps))


def test_timeslice_and_partition_run_one_after_the_other_and_side_by_side(
    run_cli, tmp_path, tb_scalars
):
    out = tmp_path / "s"
    r = run_cli("share", "stocks", "digits", "--device", "cpu", "--mode", "timeslice,partition",
                *TINY, "--out", out)  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads((out / "results.json").read_text())
    assert doc["kind"] == "share-modes" and doc["modes"] == ["timeslice", "partition"]
    timeslice, partition = doc["by_mode"]["timeslice"], doc["by_mode"]["partition"]
    for mode, res in doc["by_mode"].items():  # each mode's own folder holds the same results
        assert json.loads((out / mode / "results.json").read_text()) == res
        assert res["kind"] == "share" and res["mode"] == mode and res["method_version"] == 1
        assert [j["id"] for j in res["jobs"]] == ["stocks#1", "digits#1"]
        assert all(j["isolated"]["run_dir"][0].startswith(str(out / mode)) for j in res["jobs"])
        _check_figures(res)
        for name in ("report.md", "report.html", "np_per_job.png"):
            assert (out / mode / name).is_file() and (out / name).is_file()
        figures = {  # the mode's figures as TensorBoard scalars in its folder
            "np/stocks#1": res["jobs"][0]["np_mean"],
            "np/digits#1": res["jobs"][1]["np_mean"],
            "set/stp": res["set"]["stp"],
            "set/antt": res["set"]["antt"],
        }
        assert tb_scalars(out / mode / "tb") == {
            tag: [(0, pytest.approx(value, rel=1e-6))] for tag, value in figures.items()
        }
    usable = len(placement.usable_cpu_list())
    assert {p["threads"] for p in timeslice["placement"].values()} == {max(1, usable // 2)}
    cpus = [set(p["cpus"]) for p in partition["placement"].values()]  # read back from children
    assert cpus[0] and cpus[1] and not cpus[0] & cpus[1]
    if usable == 2:
        assert [len(c) for c in cpus] == [1, 1]
    stps = {m: res["set"]["stp"] for m, res in doc["by_mode"].items()}
    best = max(stps, key=stps.get)  # one repeat: no interval, so a best mode is named
    assert doc["conclusion"].startswith(f"{best} gave the highest total throughput")
    assert "one repeat: noise unknown" in doc["conclusion"]
    summary = _summary(r)
    assert summary["share"] == str(out) and summary["modes"] == ["timeslice", "partition"]
    assert summary["by_mode"]["partition"]["stp"] == stps["partition"]
    assert summary["by_mode"]["timeslice"]["share"] == str(out / "timeslice")
    assert "NP stocks#1" in r.out and doc["conclusion"][:40] in r.out  # the side-by-side table


def test_a_job_that_fails_mid_run_is_reported_and_the_other_measured(
    run_cli, tmp_path, monkeypatch
):
    real_env = share_run.child_env

    def env(job, where, extra):  # stocks#2 dies at its third shared step
        out = real_env(job, where, extra)
        if job.id == "stocks#2" and "shared" in extra["GPULAB_START_BARRIER"]:
            out["GPULAB_FAIL_AT_STEP"] = "3"
        return out

    monkeypatch.setattr(share_run, "child_env", env)
    r = run_cli("share", "2xstocks", "--device", "cpu", *TINY, "--out", tmp_path / "f")
    assert r.code == 0, r.err
    res = json.loads((tmp_path / "f" / "results.json").read_text())
    failed, ok = res["jobs"][1], res["jobs"][0]
    assert failed["failed"] and failed["error"] == "exit code 1" and failed["np"] is None
    assert not ok["failed"] and res["set"]["stp"] == ok["np"][0]
    assert _summary(r)["jobs"][1] == {"id": "stocks#2", "np_mean": None, "failed": True}
    assert "failed, left out of STP/ANTT/fairness: stocks#2" in r.out


def test_jobs_that_do_not_fit_in_memory_are_refused(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(placement, "device_memory_bytes", lambda kind: 2**20)
    r = run_cli("share", "2xstocks", "--device", "cpu", *TINY, "--out", tmp_path / "m")
    assert r.code == 2
    assert "peak memory adds up to" in r.err and "more than the device's 0.00 GiB" in r.err
    assert "--allow-oversubscribe" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "m" / "results.json").exists()


def test_each_job_must_fit_its_own_mig_instance(monkeypatch):
    jobs = parse_jobs(["2xstocks"], "debug", {})
    isolated = {jobs[0].key: [{"peak_memory_bytes": 3 * 2**30}]}
    options = share_run.ShareOptions(device="cuda", mode="partition")

    def whole_device(kind):
        raise AssertionError("jobs on their own MIG instances do not share the device's memory")

    monkeypatch.setattr(placement, "device_memory_bytes", whole_device)
    big = [Placement(cuda_visible_devices=f"MIG-{i}", memory_bytes=4 * 2**30) for i in (1, 2)]
    share_run.check_memory(jobs, isolated, big, options, "cuda")  # 3 GiB each in 4 GiB each: fits
    small = [big[0], Placement(cuda_visible_devices="MIG-2", memory_bytes=2 * 2**30)]
    with pytest.raises(GpulabError) as e:
        share_run.check_memory(jobs, isolated, small, options, "cuda")
    assert str(e.value).startswith(
        "stocks#2's peak memory 3.00 GiB is more than its MIG instance's 2.00 GiB (MIG-2)"
    )
    options.allow_oversubscribe = True
    share_run.check_memory(jobs, isolated, small, options, "cuda")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--device", "cpu", "--mode", "mps"), "--mode mps is a CUDA mode"),
        (("--device", "cpu", "--mode", "timeslice,mps"), "--mode mps is a CUDA mode"),
        (("--device", "cpu", "--mode", "partition,partition"), "--mode names a mode twice"),
        (("--device", "cpu", "--mode", "spread"), "unknown --mode 'spread'"),
        (("--device", "cuda", "--mode", "mps"), "no CUDA GPU is visible here"),
        (("--device", "cuda", "--mode", "partition"), "no CUDA GPU is visible here"),
    ],
)
def test_modes_the_device_cannot_do_are_one_line_errors(run_cli, tmp_path, args, message):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    r = run_cli("share", "stocks", *args, "--out", tmp_path / "x")
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before any job ran


def test_zero_jobs_is_a_one_line_error(run_cli, tmp_path):
    r = run_cli("share", "--device", "cpu", "--out", tmp_path / "z")
    assert r.code == 2 and "no JOB given" in r.err


@pytest.mark.cuda
def test_two_stocks_timeslice_one_gpu(run_cli, tmp_path):
    r = run_cli("share", "2xstocks", "--device", "cuda", *TINY, "--out", tmp_path / "g")
    assert r.code == 0, r.err
    _check_figures(json.loads((tmp_path / "g" / "results.json").read_text()))


@pytest.mark.cuda
def test_two_stocks_as_clients_of_a_private_mps_daemon(run_cli, tmp_path):
    import shutil
    import subprocess

    r = run_cli("share", "2xstocks", "--device", "cuda", "--mode", "mps", "--mps-threads", "50",
                *TINY, "--out", tmp_path / "m")  # fmt: skip
    if shutil.which(placement.MPS_CONTROL) is None:
        assert r.code == 2 and "needs nvidia-cuda-mps-control" in r.err
        return
    assert r.code == 0, r.err
    res = json.loads((tmp_path / "m" / "results.json").read_text())
    _check_figures(res)
    assert {p["mps_threads_pct"] for p in res["placement"].values()} == {50}
    pipe = tmp_path / "m" / "mps" / "pipe"
    left = subprocess.run(["pgrep", "-f", "nvidia-cuda-mps"], capture_output=True, text=True)
    for pid in left.stdout.split():  # no daemon of this run is left behind
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"CUDA_MPS_PIPE_DIRECTORY={pipe}".encode() not in environ


@pytest.mark.parametrize(("mode", "n_started"), [("timeslice", 3), ("timeslice,partition", 6)])
def test_ctrl_c_stops_every_child_and_writes_nothing(
    run_cli, tmp_path, monkeypatch, mode, n_started
):
    started: list = []
    together: list = []
    real_start, real_release = share_run._start, share_run._release

    def start(*args):
        child = real_start(*args)
        started.append(child.proc)
        return child

    def release(children, barrier):  # Ctrl-C before the last mode's shared jobs are let go
        together.extend([barrier] if len(children) > 1 else [])
        if len(together) == mode.count(",") + 1:
            raise KeyboardInterrupt
        return real_release(children, barrier)

    monkeypatch.setattr(share_run, "_start", start)
    monkeypatch.setattr(share_run, "_release", release)
    r = run_cli("share", "2xstocks", "--device", "cpu", "--mode", mode, *TINY,
                "--out", tmp_path / "c")  # fmt: skip
    assert r.code == 2 and "interrupted: every job was stopped" in r.err
    assert len(started) == n_started and all(p.poll() is not None for p in started)
    assert not list((tmp_path / "c").rglob("results.json"))  # not even the finished mode's
    assert not list((tmp_path / "c").rglob("report.*"))


class _FakeProc:
    def __init__(self, pid: int, code: int | None):
        self.pid, self.code = pid, code

    def poll(self):
        return self.code


def test_go_is_written_once_every_living_job_is_ready(tmp_path, monkeypatch):
    import os

    waits: list[float] = []

    def sleep(s: float) -> None:  # counted, not timed: the parent must not wait for the dead
        waits.append(s)
        if len(waits) > 50:
            raise AssertionError("the parent waits for a child that will never be ready")

    monkeypatch.setattr(share_run.time, "sleep", sleep)
    alive, dead = _FakeProc(os.getpid(), None), _FakeProc(2**22 + 7, 1)
    children = [types.SimpleNamespace(proc=p, cpus=None) for p in (alive, dead)]
    (tmp_path / f"ready-{alive.pid}").touch()
    share_run._release(children, tmp_path)
    assert (tmp_path / "go").exists() and not waits
    assert children[0].cpus == sorted(os.sched_getaffinity(0)) and children[1].cpus is None
    (tmp_path / "go").unlink()
    (tmp_path / f"ready-{alive.pid}").unlink()
    with pytest.raises(AssertionError, match="never be ready"):  # alive and not ready: no go
        share_run._release(children, tmp_path)
    assert not (tmp_path / "go").exists()


def test_alone_a_job_keeps_its_threads_and_mig_instance_but_no_cores_or_cap():
    shared = Placement(
        cpus=(1,), threads=1, cuda_visible_devices="MIG-abc", mps_threads_pct=30, memory_bytes=5
    )
    assert share_run.alone_placement(shared) == Placement(
        threads=1, cuda_visible_devices="MIG-abc", memory_bytes=5
    )
    assert Placement(cuda_visible_devices="MIG-abc", mps_threads_pct=30).env() == {
        "CUDA_VISIBLE_DEVICES": "MIG-abc", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
    }  # fmt: skip
