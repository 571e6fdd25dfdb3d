"""The terminal view of a share result: a table per job, the set's figures, one JSON line."""

from pathlib import Path

from gpulab.runtime.records import rate_text
from gpulab.share.metrics import mean_of_known


def _num(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _rate(value) -> str:
    return "-" if value is None else rate_text(value)


def render_table(results: dict):
    """A rich table: per job its isolated and shared samples/s, NP and peak memory."""
    from rich.table import Table

    table = Table(title=f"gpulab share: {results['mode']} on {results['device_name']}")
    for name in ("job", "isolated samples/s", "shared samples/s", "NP", "peak memory"):
        table.add_column(name, justify="left" if name == "job" else "right")
    for job in results["jobs"]:
        peak = job["peak_memory_bytes"]
        np_text = f"failed: {job['error']}" if job["failed"] else _num(job["np_mean"])
        table.add_row(
            job["id"], _rate(mean_of_known(job["isolated"]["samples_per_s"])),
            _rate(mean_of_known(job["shared"]["samples_per_s"])), np_text,
            "-" if peak is None else f"{peak / 2**20:.0f} MiB",
        )  # fmt: skip
    return table


def set_lines(results: dict) -> list[str]:
    """STP, ANTT, fairness, aggregate against the best isolated job, and the conclusion."""
    s = results["set"]
    lines = [
        f"STP {_num(s['stp'])} {_interval(s['stp_interval'])}  ANTT {_num(s['antt'])} "
        f"{_interval(s['antt_interval'])}  fairness {_num(s['fairness'])}",
        f"aggregate {_rate(s['aggregate_samples_per_s'])} samples/s, "
        f"{_num(s['aggregate_vs_best_isolated'])}x the best job alone "
        f"({_rate(s['best_isolated_samples_per_s'])} samples/s)",
    ]
    failed = [j["id"] for j in results["jobs"] if j["failed"]]
    if failed:
        lines.append(f"failed, left out of STP/ANTT/fairness: {', '.join(failed)}")
    return [*lines, results["conclusion"]]


def _interval(pair) -> str:
    return f"[{pair[0]:.2f}, {pair[1]:.2f}]" if pair else ""


def short_summary(results: dict, out: Path) -> dict:
    """The one-line JSON that ends the output."""
    s = results["set"]
    return {
        "share": str(out), "method_version": results["method_version"], "mode": results["mode"],
        "stp": s["stp"], "antt": s["antt"], "fairness": s["fairness"],
        "jobs": [
            {"id": j["id"], "np_mean": j["np_mean"], "failed": j["failed"]}
            for j in results["jobs"]
        ],
    }  # fmt: skip


def render_modes_table(doc: dict):
    """A rich table of the modes side by side: each job's NP, then STP, ANTT and fairness."""
    from rich.table import Table

    modes = doc["modes"]
    table = Table(title=f"gpulab share: {', '.join(modes)} on {doc['device_name']}")
    table.add_column("")
    for mode in modes:
        table.add_column(mode, justify="right")
    results = [doc["by_mode"][m] for m in modes]
    for i, job in enumerate(results[0]["jobs"]):
        cells = [r["jobs"][i] for r in results]
        table.add_row(
            f"NP {job['id']}", *["failed" if c["failed"] else _num(c["np_mean"]) for c in cells]
        )
    for key, name in (("stp", "STP"), ("antt", "ANTT"), ("fairness", "fairness")):
        table.add_row(name, *[_num(r["set"][key]) for r in results])
    return table


def modes_summary(doc: dict, out: Path) -> dict:
    """The one-line JSON that ends the output of several modes."""
    return {
        "share": str(out), "method_version": doc["method_version"], "modes": doc["modes"],
        "by_mode": {m: short_summary(r, out / m) for m, r in doc["by_mode"].items()},
        "conclusion": doc["conclusion"],
    }  # fmt: skip
