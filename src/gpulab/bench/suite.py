"""`gpulab bench`: every workload on every device, each run in its own process, then a report.

Two modes per workload: throughput (a fixed amount of training, evaluation off the timed path)
and, for workloads with a quality target, time-to-quality (the clock starts before data is
touched, evaluations count, the run stops at the target). Each (workload, device, mode) runs
`repeats` times; every run writes a normal run record under OUT/runs.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from gpulab.bench import stats
from gpulab.bench.study import SOURCE, STUDY
from gpulab.runtime import records, tensorboard
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json, ensure_writable_dir
from gpulab.workloads.registry import get_workload, workload_names

METHOD_VERSION = 2

# workload -> (throughput arguments, time-to-quality arguments or None), for --quick and --full
QUICK = {
    "stocks": (["--set", "epochs=3", "--set", "eval_every=0"], None),
    "digits": (["--set", "epochs=2", "--set", "eval_every=0"], ["--stop-at-quality"]),
    "cnn": (["--preset", "debug", "--set", "steps_per_epoch=20"], None),
    # the seed networks on a little data: throughput of the real model, brief training
    "style": (
        ["--set", "epochs=1", "--set", "count=16", "--set", "size=128", "--set", "eval_every=0"],
        None,
    ),
    "caption": (["--set", "epochs=1", "--set", "count=300", "--set", "eval_every=0"], None),
}
FULL = {
    "stocks": (["--set", "eval_every=0"], None),
    "digits": (["--set", "eval_every=0"], ["--stop-at-quality"]),
    "cnn": (["--set", "steps_per_epoch=50"], None),
    "style": (["--set", "eval_every=0"], None),
    "caption": (["--set", "eval_every=0"], ["--stop-at-quality"]),
}


@dataclass
class Job:
    workload: str
    device: str
    mode: str  # "throughput" or "quality"
    repeat: int
    args: list[str]


@dataclass
class RunResult:
    workload: str
    device: str
    mode: str
    repeat: int
    ok: bool = False
    error: str = ""
    run_dir: str = ""
    device_name: str = ""
    wall_s: float = 0.0
    record: records.RunRecord | None = None


def default_devices() -> list[str]:
    from gpulab.runtime import list_devices

    seen = []
    for d in list_devices():
        kind = "cpu" if d.kind == "cpu" else d.name if d.kind == "mps" else "cuda"
        if kind not in seen:
            seen.append(kind)
    return seen


def plan(workloads: list[str], devices: list[str], full: bool, repeats: int) -> list[Job]:
    table = FULL if full else QUICK
    jobs = []
    for name in workloads:
        throughput, quality = table[name]
        for device in devices:
            for r in range(repeats):
                jobs.append(Job(name, device, "throughput", r, throughput))
                if quality is not None:
                    jobs.append(Job(name, device, "quality", r, quality))
    return jobs


def check_request(workloads: list[str] | None, devices: str | None) -> tuple[list[str], list[str]]:
    """Known workloads and present devices, or a one-line error naming the known ones."""
    known = [w for w in workload_names() if w in QUICK]
    names = workloads or known
    for name in names:
        get_workload(name)
        if name not in QUICK:
            raise GpulabError(
                f"bench has no settings for {name!r}; bench one of {', '.join(known)}"
            )
    wanted = [d.strip() for d in devices.split(",")] if devices else default_devices()
    if not wanted or any(not d for d in wanted):
        raise GpulabError(f"--devices {devices!r}: give a comma-separated list such as cpu,cuda")
    from gpulab.runtime.device import resolve_device

    for d in wanted:
        resolve_device(d)  # unknown or absent devices fail before anything runs
    return names, wanted


def run_job(job: Job, runs_dir: Path, threads: int | None) -> RunResult:
    """`gpulab train` in its own process; a failure is recorded, not raised.

    The child writes under a runs root of its own, so its one run folder is found without
    reading its output; the folder then moves into `runs_dir` beside every other run."""
    result = RunResult(job.workload, job.device, job.mode, job.repeat)
    staging = Path(tempfile.mkdtemp(prefix=".bench-", dir=ensure_writable_dir(runs_dir)))
    cmd = [
        sys.executable, "-m", "gpulab", "train", job.workload,
        "--device", job.device, "--quiet", "--checkpoint-every", "0",
        "--set", f"seed={job.repeat}", "--out", str(staging), *job.args,
        *(["--threads", str(threads)] if threads else []),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    result.wall_s = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            result.error = err.removeprefix("gpulab: error: ")
            return result
        return _collect(result, staging, runs_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _collect(result: RunResult, staging: Path, runs_dir: Path) -> RunResult:
    """Move the child's run folder from `staging` into `runs_dir` and read its record."""
    try:
        staged = records.only_run(staging)
        run_dir = ensure_writable_dir(runs_dir / staged.parent.name) / staged.name
        staged.rename(run_dir)
        rec = records.read_record(run_dir)
    except GpulabError as e:
        result.error = str(e)
        return result
    threads_used = rec.environment.device.get("threads")
    result.device_name = rec.device_name + (f", {threads_used} threads" if threads_used else "")
    result.ok, result.run_dir, result.record = True, str(run_dir), rec
    return result


def aggregate(results: list[RunResult]) -> list[dict]:
    """One row per (workload, device, mode): statistics over the repeats that succeeded."""
    rows = []
    keys = list(dict.fromkeys((r.workload, r.device, r.mode) for r in results))
    for workload, device, mode in keys:
        runs = [r for r in results if (r.workload, r.device, r.mode) == (workload, device, mode)]
        good = [r for r in runs if r.ok]
        row = {
            "workload": workload,
            "device": device,
            "mode": mode,
            "device_name": good[0].device_name if good else "",
            "repeats": len(runs),
            "failed": [r.error for r in runs if not r.ok],
            "run_dirs": [r.run_dir for r in good],
        }
        if good:
            row.update(_measures([r.record for r in good]))
            if mode == "quality":
                row.update(_quality([r.record for r in good]))
        rows.append(row)
    _add_speedups(rows)
    return rows


def _measures(recs: "list[records.RunRecord]") -> dict:
    """Throughput, step times, data wait, memory, MFU and the key metric over the repeats."""
    rates = [rec.timing.samples_per_s for rec in recs]
    efficiency = [rec.efficiency for rec in recs if rec.efficiency is not None]
    return dict(
        samples_per_s=stats.summarize(rates),
        samples_per_s_runs=rates,
        step_median_s=stats.olympic_mean([rec.timing.step_median_s for rec in recs]),
        step_iqr_s=stats.olympic_mean([rec.timing.step_iqr_s for rec in recs]),
        step_s=recs[0].timing.step_s,
        data_wait_fraction=stats.olympic_mean([rec.timing.data_wait_fraction for rec in recs]),
        peak_memory_bytes=max(rec.memory.peak_bytes for rec in recs),
        memory_kind=recs[0].memory.kind,
        mfu=_mean_or_none([e.mfu for e in efficiency]),
        achieved_tflops=_mean_or_none([e.achieved_tflops for e in efficiency]),
        key_metric=recs[0].key_metric.name,
        key_value=_mean_or_none([rec.key_metric.value for rec in recs]),
        train_s=stats.olympic_mean([rec.timing.train_s for rec in recs]),
        energy=_energy(recs),
    )


NO_ENERGY = "the runs' records hold no energy (written before gpulab measured it)"


def _energy(recs: "list[records.RunRecord]") -> dict:
    """Energy per sample of the timed steps and average power over the repeats (olympic
    means): the measured sources together, and each source with its reason where unmeasured."""
    found = [rec.energy for rec in recs if rec.energy is not None]
    if not found:
        unknown = {"source": None, "joules_per_sample": None, "watts": None, "reason": NO_ENERGY}
        return {
            "joules_per_sample": None,
            "watts": None,
            "sources": {"gpu": unknown, "cpu": unknown},
        }
    watts = [[r.watts for r in (e.gpu, e.cpu) if r.watts is not None] for e in found]
    return {
        "joules_per_sample": _mean_or_none([e.joules_per_sample for e in found]),
        "watts": _mean_or_none([sum(w) for w in watts if w]),
        "sources": {name: _energy_source(found, name) for name in ("gpu", "cpu")},
    }


def _energy_source(found: "list[records.Energy]", name: str) -> dict:
    readings = [(getattr(e, name), e.samples) for e in found]
    measured = [(r, n) for r, n in readings if r.joules is not None and n > 0]
    if not measured:
        return {
            "source": None,
            "joules_per_sample": None,
            "watts": None,
            "reason": readings[0][0].reason,
        }
    partial = len(measured) < len(readings)
    return {
        "source": measured[0][0].source,
        "joules_per_sample": stats.olympic_mean([r.joules / n for r, n in measured]),
        "watts": _mean_or_none([r.watts for r, _ in measured]),
        "reason": f"measured in {len(measured)} of {len(readings)} runs" if partial else None,
    }


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return stats.olympic_mean(values) if values else None


def _quality(recs: "list[records.RunRecord]") -> dict:
    q = [rec.quality for rec in recs]
    times = [x.time_to_quality_s for x in q if x is not None and x.reached]
    metric = q[0].metric if q[0] is not None else None
    curves = [[(h["time_s"], h.get(metric)) for h in rec.history if "time_s" in h] for rec in recs]
    return {
        "quality_metric": metric,
        "quality_target": q[0].target if q[0] is not None else None,
        "reached": f"{len(times)}/{len(recs)}",
        "reached_all": len(times) == len(recs),
        "time_to_quality": stats.summarize(times) if times else None,
        "curves": curves,
    }


def _add_speedups(rows: list[dict]) -> None:
    cpu = {
        (r["workload"], r["mode"]): r
        for r in rows
        if r["device"] == "cpu" and r.get("samples_per_s_runs")
    }
    for r in rows:
        base = cpu.get((r["workload"], r["mode"]))
        study = STUDY.get(r["workload"])
        r["study_speedup"] = study.gpu_speedup if study and r["device"] != "cpu" else None
        if base is None or not r.get("samples_per_s_runs"):
            r["speedup_vs_cpu"] = None
            continue
        if r["mode"] == "quality":  # time to quality, where every run on both sides reached it
            if r.get("reached_all") and base.get("reached_all"):
                ratio = (
                    base["time_to_quality"]["olympic_mean"] / r["time_to_quality"]["olympic_mean"]
                )
                r["speedup_vs_cpu"] = {"speedup": ratio, "low": None, "high": None, "level": 0.95}
            else:
                r["speedup_vs_cpu"] = None
        else:
            r["speedup_vs_cpu"] = stats.speedup(base["samples_per_s_runs"], r["samples_per_s_runs"])


def run_probe(out: Path, device: str, say) -> dict | None:
    """`gpulab probe --quick` in its own process; its JSON, or None if it failed."""
    path = out / "probe.json"
    say(f"probe --quick on {device}")
    proc = subprocess.run(
        [sys.executable, "-m", "gpulab", "probe", "--quick", "--device", device,
         "--json", str(path), "--dir", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not path.is_file():
        return None
    return json.loads(path.read_text())


def check_tag(tag: str | None) -> None:
    if tag is not None and not (0 < len(tag) <= 64 and tag.isprintable() and tag.strip() == tag):
        raise GpulabError(
            f"--tag {tag!r}: a machine's name is 1 to 64 printable characters without leading or "
            "trailing spaces, e.g. --tag a100-vm"
        )


def prepare_out(out: Path | None, force: bool) -> Path:
    if out is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path("runs") / "bench" / stamp
    if out.exists() and any(out.iterdir()) and not force:
        raise GpulabError(f"{out} exists and is not empty; choose a new --out or pass --force")
    return ensure_writable_dir(out)


def run_jobs(
    jobs: list[Job], runs_dir: Path, threads: int | None, repeats: int, console
) -> tuple[list[RunResult], bool]:
    """Each job in turn under a progress bar; Ctrl-C stops them and keeps what finished.
    Returns the results and whether the suite was interrupted."""
    from gpulab.runtime.progress import ProgressBar

    results: list[RunResult] = []
    try:
        with ProgressBar("bench", len(jobs)) as bar:
            for done, job in enumerate(jobs):
                label = f"{job.workload} {job.mode} on {job.device} ({job.repeat + 1}/{repeats})"
                bar.update(done, label=label)
                if not bar.enabled:  # a log, not a terminal: say what runs while it runs
                    print(f"  {label}: running", flush=True)
                result = run_job(job, runs_dir, threads)
                results.append(result)
                state = f"{result.wall_s:.1f} s" if result.ok else f"failed: {result.error}"
                print(f"  {label}: {state}", flush=True)  # above the bar while it shows
                bar.update(done + 1)
    except KeyboardInterrupt:
        console.print("bench: interrupted; reporting what finished")
        return results, True
    return results, False


def run_suite(
    workloads: list[str] | None,
    devices: str | None,
    full: bool = False,
    repeats: int | None = None,
    out: Path | None = None,
    force: bool = False,
    threads: int | None = None,
    probe: bool = True,
    tag: str | None = None,
) -> dict:
    """Run the suite with a live progress display; Ctrl-C stops it and still writes the report.
    `tag` names the machine in the results (a fleet's `report compare` shows it)."""
    from rich.console import Console

    from gpulab.bench.report import energy_notes, render_table, write_reports

    names, wanted = check_request(workloads, devices)
    check_tag(tag)
    repeats = repeats if repeats is not None else (3 if full else 1)
    if repeats < 1:
        raise GpulabError("--repeats must be at least 1")
    # the runs go where every run goes (`gpulab runs`, the web UI list them), or beside an
    # explicit report folder
    runs_dir = out / "runs" if out is not None else Path("runs")
    out = prepare_out(out, force)
    console = Console(width=max(Console().width, 120))
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    probe_result = None
    if probe:
        probe_result = run_probe(out, wanted[-1], console.print)
    jobs = plan(names, wanted, full, repeats)
    results, interrupted = run_jobs(jobs, runs_dir, threads, repeats, console)
    rows = aggregate(results)
    summary = {
        "method_version": METHOD_VERSION,
        "created_utc": started,
        "tag": tag,
        "mode": "full" if full else "quick",
        "repeats": repeats,
        "devices": wanted,
        "workloads": names,
        "interrupted": interrupted,
        "study_source": SOURCE,
        "probe": probe_result,
        "rows": rows,
        "runs": [
            {f.name: getattr(r, f.name) for f in fields(r) if f.name != "record"} for r in results
        ],
    }
    atomic_write_json(out / "results.json", summary)
    write_reports(out, summary)
    tensorboard.write_scalars(out / tensorboard.FOLDER, tensorboard_scalars(rows))
    console.print(render_table(rows))
    for note in energy_notes(rows):
        print(note)  # whole: a reason names files
    console.print(f"study figures: {SOURCE}")
    console.print(f"report: {out / 'report.html'} and {out / 'report.md'}")
    if results and not any(r.ok for r in results):
        raise GpulabError("no bench run finished; see the errors above")
    from gpulab.cost.run import bench_cost_line

    line = bench_cost_line(out)
    if line:
        console.print(line)
    print(json.dumps(short_summary(summary, out)))
    return summary


def tensorboard_scalars(rows: list[dict]) -> dict[str, float]:
    """Each (workload, device, mode) row's samples/s (olympic mean of its repeats) by tag."""
    return {
        f"samples_per_s/{r['workload']}/{r['device']}/{r['mode']}": r["samples_per_s"][
            "olympic_mean"
        ]
        for r in rows
        if r.get("samples_per_s")
    }


def short_summary(summary: dict, out: Path) -> dict:
    """The one-line JSON that ends the output."""
    return {
        "bench": str(out),
        "method_version": summary["method_version"],
        "mode": summary["mode"],
        "rows": [
            {
                "workload": r["workload"],
                "device": r["device"],
                "mode": r["mode"],
                "samples_per_s": (r.get("samples_per_s") or {}).get("olympic_mean"),
                "time_to_quality_s": (r.get("time_to_quality") or {}).get("olympic_mean"),
                "speedup_vs_cpu": (r.get("speedup_vs_cpu") or {}).get("speedup"),
                "failed": len(r["failed"]),
            }
            for r in summary["rows"]
        ],
    }
