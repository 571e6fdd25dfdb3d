"""The method of `gpulab share`: every distinct job alone, then all of them together from a
common start barrier, `repeats` times; each job is its own `gpulab train` process."""

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from gpulab.runtime import records, tensorboard
from gpulab.runtime.device import resolve_device
from gpulab.runtime.environment import describe_device
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json, ensure_writable_dir
from gpulab.share import metrics
from gpulab.share import placement as place
from gpulab.share.jobs import Job, parse_jobs
from gpulab.share.results import build_results, slowest_np

METHOD_VERSION = 1
POLL_S = 0.02  # how often the parent looks at its children while they set up and run


@dataclass
class ShareOptions:
    """How to share: everything but the jobs."""

    device: str = "cpu"
    mode: str = "timeslice"
    repeats: int = 1
    out: Path | None = None
    preset: str = "default"
    common: dict[str, str] = field(default_factory=dict)  # --set for every job
    mps_threads_pct: int | None = None
    allow_oversubscribe: bool = False
    quiet: bool = False  # no line per phase
    command: list[str] = field(default_factory=lambda: ["gpulab", *sys.argv[1:]])


@dataclass
class _Child:
    """One `gpulab train` process of a phase."""

    job: Job
    folder: Path  # its own runs root
    proc: subprocess.Popen
    exited_s: float | None = None  # on the parent's clock
    cpus: list[int] | None = None  # its allowed cores, read back while it waits


def run_share(specs: list[str], options: ShareOptions) -> dict:
    """Measure one mode, then write OUT/results.json atomically (only at the end: an
    interrupted run writes nothing) and return its contents."""
    plan = _plan(specs, options, [options.mode])
    out = _prepare_out(options.out)
    results = _interruptible(lambda: _run_mode(plan, options.mode, options, out))
    atomic_write_json(out / "results.json", results)
    tensorboard.write_scalars(out / tensorboard.FOLDER, tensorboard_scalars(results))
    return results


def run_share_modes(specs: list[str], options: ShareOptions, modes: list[str]) -> dict:
    """Measure the same jobs under each mode in turn, each in OUT/<mode>; then write every
    mode's results.json and OUT/results.json (kind "share-modes", the modes side by side),
    all at the end. Every mode is checked before the first job starts."""
    if len(set(modes)) != len(modes):
        raise GpulabError(f"--mode names a mode twice ({','.join(modes)}); name each once")
    plan = _plan(specs, options, modes)
    out = _prepare_out(options.out)
    by_mode = _interruptible(lambda: {m: _run_mode(plan, m, options, out / m) for m in modes})
    for mode, results in by_mode.items():
        atomic_write_json(out / mode / "results.json", results)
        tensorboard.write_scalars(out / mode / tensorboard.FOLDER, tensorboard_scalars(results))
    combined = {
        "kind": "share-modes", "method_version": METHOD_VERSION,
        "created_utc": by_mode[modes[0]]["created_utc"], "command": options.command,
        "device": options.device, "device_name": by_mode[modes[0]]["device_name"],
        "modes": modes, "repeats": options.repeats, "by_mode": by_mode,
        "conclusion": metrics.modes_conclusion(
            {m: (r["set"]["stp"], slowest_np(r["jobs"]), r["set"]["stp_interval"]) for m, r in by_mode.items()}
        ),
    }  # fmt: skip
    atomic_write_json(out / "results.json", combined)
    return combined


@dataclass(frozen=True)
class _Plan:
    """What every mode runs: the device, the jobs, and each mode's placements."""

    device: object  # torch.device
    jobs: list[Job]
    placements: dict[str, list[place.Placement]]


def _plan(specs: list[str], options: ShareOptions, modes: list[str]) -> _Plan:
    device = resolve_device(options.device)
    for mode in modes:
        place.check_mode(mode, device.type)
    if options.repeats < 1:
        raise GpulabError("--repeats must be at least 1")
    if options.mps_threads_pct is not None and not 0 < options.mps_threads_pct <= 100:
        raise GpulabError("--mps-threads is a percentage: pass 1 to 100")
    jobs = parse_jobs(specs, options.preset, options.common)
    placements = {m: _placements(m, options, device.type, len(jobs)) for m in modes}
    return _Plan(device, jobs, placements)


def _interruptible(measure):
    try:
        return measure()
    except KeyboardInterrupt:
        raise GpulabError(
            "interrupted: every job was stopped and no results were written"
        ) from None


def _run_mode(plan: _Plan, mode: str, options: ShareOptions, out: Path) -> dict:
    """One mode measured into `out`: its results, not yet written."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    placements = plan.placements[mode]
    isolated, shared = _measure(plan.jobs, placements, mode, options, plan.device.type, out)
    results = build_results(plan.jobs, isolated, shared, placements)
    return {
        "kind": "share", "method_version": METHOD_VERSION, "created_utc": created,
        "command": options.command, "device": options.device,
        "device_name": describe_device(plan.device)["name"], "mode": mode,
        "repeats": options.repeats, **results,
    }  # fmt: skip


def tensorboard_scalars(results: dict) -> dict[str, float]:
    """One mode's figures by tag: each job's mean normalised progress, the set's STP and ANTT."""
    scalars = {f"np/{j['id']}": j["np_mean"] for j in results["jobs"] if j["np_mean"] is not None}
    scalars |= {
        f"set/{k}": results["set"][k] for k in ("stp", "antt") if results["set"][k] is not None
    }
    return scalars


def _placements(mode: str, options: ShareOptions, device_type: str, n_jobs: int):
    if device_type == "cpu":
        return place.cpu_placements(mode, n_jobs)
    found = place.cuda_placements(mode, n_jobs, options.mps_threads_pct)
    if mode == "partition":
        place.check_partition_count(found, n_jobs)
    return found


def default_out() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("runs") / "share" / stamp


def _prepare_out(out: Path | None) -> Path:
    out = out if out is not None else default_out()
    if out.exists() and (out / "results.json").exists():
        raise GpulabError(f"{out} already holds share results; choose a new --out")
    return ensure_writable_dir(out)


def _measure(jobs, placements, mode, options, device_type, out):
    """Per repeat: each distinct job alone, then all together. Returns the isolated outcomes
    per job key and the shared ones per job id, each a list over repeats."""
    isolated: dict[tuple, list[dict]] = {}
    shared: dict[str, list[dict]] = {j.id: [] for j in jobs}
    distinct: dict[tuple, Job] = {}
    for j in jobs:
        distinct.setdefault(j.key, j)
    with contextlib.ExitStack() as stack:
        extra = {}
        if mode == "mps":
            extra = stack.enter_context(place.mps_daemon(out / "mps"))
        for r in range(options.repeats):
            for job in distinct.values():
                folder = out / "runs" / f"r{r + 1}-isolated" / _safe(job.id)
                _say(options, f"{mode}, round {r + 1}/{options.repeats}: {job.id} alone")
                where = alone_placement(placements[jobs.index(job)])
                (outcome,) = _run_together([job], [where], folder, options, extra)
                isolated.setdefault(job.key, []).append(outcome)
            if r == 0:
                check_memory(jobs, isolated, placements, options, device_type)
            folder = out / "runs" / f"r{r + 1}-shared"
            _say(options, f"{mode}, round {r + 1}/{options.repeats}: {len(jobs)} jobs together")
            for job, outcome in zip(jobs, _run_together(jobs, placements, folder, options, extra)):
                shared[job.id].append(outcome)
    return isolated, shared


def _say(options: ShareOptions, line: str) -> None:
    if not options.quiet:
        print(f"  {line}", flush=True)


def alone_placement(shared: place.Placement) -> place.Placement:
    """A job alone has the whole device (no core set, no MPS cap) but keeps the threads it has
    when shared: the same work, with only the other jobs taken away. A MIG instance stays: while
    MIG is on, no process reaches the whole GPU."""
    return place.Placement(
        threads=shared.threads,
        cuda_visible_devices=shared.cuda_visible_devices,
        memory_bytes=shared.memory_bytes,
    )


def _safe(job_id: str) -> str:
    return job_id.replace("#", "-")


def check_memory(jobs, isolated, placements, options, device_type) -> None:
    """Refuse, with the numbers, when the jobs' isolated peaks do not fit: each in its own MIG
    instance, or all together in the device they share."""
    if options.allow_oversubscribe:
        return
    peaks = [_peak(isolated[j.key]) for j in jobs]
    for job, peak, where in zip(jobs, peaks, placements):
        if where.memory_bytes is not None and peak > where.memory_bytes:
            raise GpulabError(
                f"{job.id}'s peak memory {_gib(peak)} is more than its MIG instance's "
                f"{_gib(where.memory_bytes)} ({where.cuda_visible_devices}); run a smaller job, "
                "ask for larger instances, or pass --allow-oversubscribe"
            )
    together = [(j, p) for j, p, w in zip(jobs, peaks, placements) if w.memory_bytes is None]
    total = sum(p for _, p in together)
    have = place.device_memory_bytes(device_type) if together else 0
    if total > have:
        each = ", ".join(f"{j.id} {_gib(p)}" for j, p in together)
        raise GpulabError(
            f"the jobs' peak memory adds up to {_gib(total)} ({each}), more than the "
            f"device's {_gib(have)}; run fewer or smaller jobs, or pass --allow-oversubscribe"
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _peak(outcomes: list[dict]) -> int:
    return max((o.get("peak_memory_bytes") or 0 for o in outcomes), default=0)


def _run_together(jobs, placements, folder, options, extra) -> list[dict]:
    """Start one child per job, let them set up, start their timed steps together, wait for all;
    every child is stopped if this is interrupted."""
    barrier = ensure_writable_dir(folder / "barrier")
    children: list[_Child] = []
    try:
        for i, (job, where) in enumerate(zip(jobs, placements)):
            own = ensure_writable_dir(folder / _safe(job.id) if len(jobs) > 1 else folder / "run")
            env = child_env(job, where, {**extra, "GPULAB_START_BARRIER": str(barrier)})
            children.append(_start(job, where, own, options, env, i))
        go_s = _release(children, barrier)
        _wait_all(children)
    finally:
        _stop(children)
    return [_outcome(c, go_s) for c in children]


def child_env(job: Job, where: place.Placement, extra: dict[str, str]) -> dict[str, str]:
    """The child's environment: the parent's, the placement's and the barrier's."""
    return {**os.environ, **where.env(), **extra}


def _command(job: Job, where: place.Placement, own: Path, options: ShareOptions) -> list[str]:
    sets = {**options.common, **job.settings}
    return [
        sys.executable, "-m", "gpulab", "train", job.workload, "--preset", options.preset,
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        "--device", "cuda" if where.cuda_visible_devices else options.device, "--out", str(own), "--quiet", "--checkpoint-every", "0",
        *(["--threads", str(where.threads)] if where.threads else []),
    ]  # fmt: skip


def _start(job, where, own: Path, options, env, index: int) -> _Child:
    cpus = where.cpus
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(own / "stdout.txt", "w") as out, open(own / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            _command(job, where, own, options), env=env, stdout=out, stderr=err,
            stdin=subprocess.DEVNULL, preexec_fn=pin,
        )  # fmt: skip
    return _Child(job, own, proc)


def _release(children: list[_Child], barrier: Path) -> float:
    """Wait until every living child is ready (set up), read back their cores, write `go`;
    a child that died during setup does not hold the others back. Returns go's time."""
    while True:
        ready = {p.name for p in barrier.glob("ready-*")}
        waiting = [
            c for c in children if c.proc.poll() is None and f"ready-{c.proc.pid}" not in ready
        ]
        if not waiting:
            break
        time.sleep(POLL_S)
    for c in children:
        c.cpus = _allowed_cpus(c.proc.pid)
    (barrier / "go").touch()
    return time.perf_counter()


def _allowed_cpus(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except (OSError, AttributeError):  # it has exited, or the OS does not tell
        return None


def _wait_all(children: list[_Child]) -> None:
    """Poll until every child has exited, noting each exit on the parent's clock."""
    while any(c.exited_s is None for c in children):
        for c in children:
            if c.exited_s is None and c.proc.poll() is not None:
                c.exited_s = time.perf_counter()
        time.sleep(POLL_S)


def _stop(children: list[_Child]) -> None:
    for c in children:
        if c.proc.poll() is None:
            c.proc.terminate()
    for c in children:
        try:
            c.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def _outcome(child: _Child, go_s: float) -> dict:
    """The child's rate, timed seconds, peak memory and run folder, or its last error line."""
    turnaround = child.exited_s - go_s if child.exited_s is not None else None
    base = {"turnaround_s": turnaround, "cpus": child.cpus}
    if child.proc.returncode != 0:
        return {**base, "error": _last_error(child)}
    try:
        run_dir = records.only_run(child.folder)
        rec = records.read_record(run_dir)
    except GpulabError as e:
        return {**base, "error": str(e)}
    return {
        **base, "error": None, "run_dir": str(run_dir),
        "samples_per_s": rec.timing.samples_per_s, "timed_s": rec.timing.train_s,
        "peak_memory_bytes": rec.memory.peak_bytes if rec.memory else None,
    }  # fmt: skip


def _last_error(child: _Child) -> str:
    lines = (child.folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
    last = lines[-1] if lines else f"exit code {child.proc.returncode}"
    return last.removeprefix("gpulab: error: ")
