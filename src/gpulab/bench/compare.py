"""`gpulab report compare A B`: two bench result sets side by side, with ratios and noise."""

import json
from pathlib import Path

from gpulab.bench import stats
from gpulab.bench.suite import METHOD_VERSION
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.records import rate_text


def load_results(path: Path) -> dict:
    """A bench results.json, given as the file or the report folder holding it."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise GpulabError(f"{path}: no results.json there; pass a `gpulab bench` report folder")
    try:
        doc = json.loads(file.read_text())
        ok = isinstance(doc, dict) and "method_version" in doc and isinstance(doc.get("rows"), list)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise GpulabError(f"{file} is not a gpulab bench result; pass a bench results.json")
    if doc["method_version"] != METHOD_VERSION:
        raise GpulabError(
            f"{file} was measured with method_version {doc['method_version']}, this gpulab uses "
            f"{METHOD_VERSION}; compare results of the same method (rerun gpulab bench)"
        )
    return doc


def compare(a: dict, b: dict) -> list[dict]:
    """Per (workload, device, mode) in both: rates, the ratio B/A and whether it is noise."""
    index = {(r["workload"], r["device"], r["mode"]): r for r in a["rows"]}
    out = []
    for rb in b["rows"]:
        key = (rb["workload"], rb["device"], rb["mode"])
        ra = index.get(key)
        if ra is None or not ra.get("samples_per_s_runs") or not rb.get("samples_per_s_runs"):
            continue
        sp = stats.speedup(ra["samples_per_s_runs"], rb["samples_per_s_runs"])
        if sp is None:
            sp, note = {"speedup": None, "low": None, "high": None}, "a side timed no step"
        elif sp["low"] is None:
            note = "one run on a side: noise unknown"
        elif sp["low"] <= 1 <= sp["high"]:
            note = "within the noise of the repeats"
        else:
            note = "B faster" if sp["speedup"] > 1 else "A faster"
        row = {
            "workload": key[0],
            "device": key[1],
            "mode": key[2],
            "a_samples_per_s": ra["samples_per_s"]["olympic_mean"],
            "b_samples_per_s": rb["samples_per_s"]["olympic_mean"],
            "ratio": sp["speedup"],
            "low": sp["low"],
            "high": sp["high"],
            "note": note,
        }
        ta, tb = ra.get("time_to_quality"), rb.get("time_to_quality")
        if ta and tb:
            row["time_to_quality_ratio"] = ta["olympic_mean"] / tb["olympic_mean"]
        out.append(row)
    if not out:
        raise GpulabError("the two results share no workload, device and mode; nothing to compare")
    return out


def render(rows: list[dict], a: str, b: str) -> str:
    lines = [
        f"A: {a}",
        f"B: {b}",
        "",
        "| workload | device | mode | A samples/s | B samples/s | B / A | 95% interval | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = "" if r["low"] is None else f"{r['low']:.2f}-{r['high']:.2f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        extra = (
            f"; time to quality A/B {r['time_to_quality_ratio']:.2f}"
            if "time_to_quality_ratio" in r
            else ""
        )
        lines.append(
            f"| {r['workload']} | {r['device']} | {r['mode']} | {rate_text(r['a_samples_per_s'])} | "
            f"{rate_text(r['b_samples_per_s'])} | {ratio} | {interval} | {r['note']}{extra} |"
        )
    return "\n".join(lines) + "\n"
