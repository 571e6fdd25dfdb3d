"""The measured outcomes of `gpulab share` turned into results.json's jobs, set and conclusion."""

import statistics

from gpulab.share import metrics

WARMUP = (
    "each job's warm-up steps (and setup, compile, data loading) are outside its timed window; "
    "all jobs start their timed steps after a common barrier"
)
ISOLATED = (
    "each job alone on the whole device (no core set or MPS cap; on MIG, its own instance), "
    "with the threads it has when shared"
)


def build_results(jobs, isolated: dict, shared: dict, placements) -> dict:
    """`isolated`: job key -> outcomes per repeat; `shared`: job id -> outcomes per repeat."""
    rows = [_job_row(j, isolated[j.key], shared[j.id]) for j in jobs]
    repeats = len(next(iter(shared.values()), []))
    np_by_repeat = [[r["np"][i] for r in rows if not r["failed"]] for i in range(repeats)]
    figures = metrics.set_figures(np_by_repeat)
    ok = [r for r in rows if not r["failed"]]
    return {
        "warmup": WARMUP,
        "isolated": ISOLATED,
        "placement": _placement(jobs, placements, shared),
        "jobs": rows,
        "set": {**figures, **_aggregate(ok)},
        "conclusion": metrics.conclusion(figures["stp"], slowest_np(rows)),
    }


def slowest_np(jobs: list[dict]) -> float | None:
    """The lowest mean NP of the jobs that did not fail; None where all failed."""
    return min((j["np_mean"] for j in jobs if not j["failed"]), default=None)


def _job_row(job, alone: list[dict], together: list[dict]) -> dict:
    errors = [o["error"] for o in (*alone, *together) if o["error"]]
    failed = bool(errors)
    nps = None
    if not failed:
        nps = [
            metrics.normalised_progress(a["samples_per_s"], s["samples_per_s"])
            for a, s in zip(alone, together)
        ]
    peaks = [o.get("peak_memory_bytes") for o in alone if o.get("peak_memory_bytes")]
    return {
        "id": job.id, "spec": job.spec, "workload": job.workload, "settings": job.settings,
        "isolated": _phase(alone, ("samples_per_s", "timed_s", "run_dir")),
        "shared": _phase(together, ("samples_per_s", "timed_s", "turnaround_s", "run_dir")),
        "np": nps,
        "np_mean": statistics.fmean(nps) if nps else None,
        "np_interval": metrics.mean_interval(nps) if nps else None,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "failed": failed,
        "error": errors[0] if errors else None,
    }  # fmt: skip


def _phase(outcomes: list[dict], keys: tuple[str, ...]) -> dict:
    return {k: [o.get(k) for o in outcomes] for k in keys}


def _aggregate(ok: list[dict]) -> dict:
    """The jobs' summed shared rate against the best job alone (mean rates over repeats)."""
    shared = sum(statistics.fmean(r["shared"]["samples_per_s"]) for r in ok) if ok else None
    best = max((statistics.fmean(r["isolated"]["samples_per_s"]) for r in ok), default=None)
    return {
        "aggregate_samples_per_s": shared,
        "best_isolated_samples_per_s": best,
        "aggregate_vs_best_isolated": shared / best if shared and best else None,
    }


def _placement(jobs, placements, shared: dict) -> dict:
    """Per job: where it was placed; `cpus` as read back from the first shared child (the
    cores the OS let it use), else as asked."""
    out = {}
    for job, where in zip(jobs, placements):
        row = where.as_dict()
        first = shared[job.id][0] if shared[job.id] else {}
        if first.get("cpus") is not None:
            row["cpus"] = first["cpus"]
        out[job.id] = row
    return out
