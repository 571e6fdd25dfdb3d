"""`gpulab report compare A B`: two bench result sets, or two share results, side by side."""

import json
from pathlib import Path

from gpulab.bench import stats
from gpulab.bench.suite import METHOD_VERSION
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.records import rate_text
from gpulab.share.run import METHOD_VERSION as SHARE_METHOD_VERSION


def _read(path: Path) -> tuple[Path, object]:
    """The results.json at `path` (the file or the report folder holding it), parsed, or None."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise GpulabError(
            f"{path}: no results.json there; pass a `gpulab bench` or `gpulab share` report folder"
        )
    try:
        return file, json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        return file, None


def _check_bench(file: Path, doc: object) -> dict:
    ok = isinstance(doc, dict) and "method_version" in doc and isinstance(doc.get("rows"), list)
    if not ok:
        raise GpulabError(f"{file} is not a gpulab bench result; pass a bench results.json")
    if doc["method_version"] != METHOD_VERSION:
        raise GpulabError(
            f"{file} was measured with method_version {doc['method_version']}, this gpulab uses "
            f"{METHOD_VERSION}; compare results of the same method (rerun gpulab bench)"
        )
    return doc


def _is_share(doc: dict) -> bool:
    """Whether a kind "share" document holds what compare reads: mode, device, set, jobs."""
    jobs = doc.get("jobs")
    if not isinstance(jobs, list) or not isinstance(doc.get("set"), dict):
        return False
    whole_jobs = all(isinstance(j, dict) and {"id", "failed"} <= j.keys() for j in jobs)
    return whole_jobs and {"mode", "device"} <= doc.keys()


def _check_share(file: Path, doc: dict) -> dict:
    if not _is_share(doc):
        raise GpulabError(f"{file} is not a gpulab share result; pass a share results.json")
    if doc.get("method_version") != SHARE_METHOD_VERSION:
        raise GpulabError(
            f"{file} was measured with method_version {doc.get('method_version')}, this gpulab "
            f"uses {SHARE_METHOD_VERSION}; compare results of the same method (rerun gpulab share)"
        )
    return doc


def load_results(path: Path) -> dict:
    """A bench results.json, given as the file or the report folder holding it."""
    return _check_bench(*_read(path))


def load_any(path: Path) -> dict:
    """A bench or a share results.json (kind "share"), given as the file or its folder."""
    file, doc = _read(path)
    if isinstance(doc, dict) and doc.get("kind") == "share-modes":
        modes = doc.get("modes") or ["MODE"]
        raise GpulabError(
            f"{file} holds several modes side by side (its report.html already compares them); "
            f"to compare one mode with another result pass its folder, e.g. {file.parent / modes[0]}"
        )
    if isinstance(doc, dict) and doc.get("kind") == "share":
        return _check_share(file, doc)
    return _check_bench(file, doc)


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


# -- two share results ------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else b / a


def _np_note(ja: dict | None, jb: dict | None) -> str:
    """Whether a job's NP moved beyond the spread of the repeats, or why it cannot be said."""
    for side, j in (("A", ja), ("B", jb)):
        if j is None:
            return f"not in {side}"
    failed = [side for side, j in (("A", ja), ("B", jb)) if j["failed"]]
    if failed:
        return "failed in " + " and ".join(failed)
    ia, ib = ja.get("np_interval"), jb.get("np_interval")
    if not ia or not ib:
        return "one repeat on a side: noise unknown"
    if ia[0] <= ib[1] and ib[0] <= ia[1]:
        return "within the noise of the repeats"
    return "B higher" if jb["np_mean"] > ja["np_mean"] else "A higher"


def _np_of(j: dict | None) -> float | None:
    return None if j is None or j["failed"] else j.get("np_mean")


SHARE_FIGURES = (
    ("STP", "stp", "higher is better"),
    ("ANTT", "antt", "lower is better"),
    ("fairness", "fairness", "higher is better"),
    ("aggregate samples/s", "aggregate_samples_per_s", "higher is better"),
)


def compare_share(a: dict, b: dict) -> tuple[list[dict], list[dict]]:
    """Per job id (in A's order, then B's others): NP A, NP B, B/A and a note; then the set's
    figures (STP, ANTT, fairness, aggregate rate) A, B and B/A."""
    ja = {j["id"]: j for j in a["jobs"]}
    jb = {j["id"]: j for j in b["jobs"]}
    jobs = []
    for job_id in dict.fromkeys([*ja, *jb]):
        np_a, np_b = _np_of(ja.get(job_id)), _np_of(jb.get(job_id))
        note = _np_note(ja.get(job_id), jb.get(job_id))
        jobs.append(
            {"job": job_id, "a_np": np_a, "b_np": np_b, "ratio": _ratio(np_a, np_b), "note": note}
        )
    figures = []
    for name, key, better in SHARE_FIGURES:
        va, vb = a["set"].get(key), b["set"].get(key)
        figures.append({"figure": name, "a": va, "b": vb, "ratio": _ratio(va, vb), "note": better})
    return jobs, figures


def _num(x: float | None) -> str:
    return "" if x is None else rate_text(x) if abs(x) >= 99.95 else f"{x:.2f}"


def _side(results: dict) -> str:
    name = results.get("device_name")
    return f"{results['mode']} on {results['device']}" + (f" ({name})" if name else "")


def render_share(jobs: list[dict], figures: list[dict], a: dict, b: dict, a_name, b_name) -> str:
    lines = [
        f"A: {a_name} ({_side(a)})",
        f"B: {b_name} ({_side(b)})",
        "",
        "| job | A NP | B NP | B / A | note |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['job']} | {_num(r['a_np'])} | {_num(r['b_np'])} | {_num(r['ratio'])} | {r['note']} |"
        for r in jobs
    ]
    lines += ["", "| figure | A | B | B / A | note |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['figure']} | {_num(r['a'])} | {_num(r['b'])} | {_num(r['ratio'])} | {r['note']} |"
        for r in figures
    ]
    return "\n".join(lines) + "\n"


def compare_text(a: Path, b: Path) -> str:
    """The comparison of two bench results or of two share results, as Markdown."""
    da, db = load_any(a), load_any(b)
    kinds = {da.get("kind") == "share", db.get("kind") == "share"}
    if kinds == {True, False}:
        raise GpulabError(
            f"{a} and {b} are one bench result and one share result; compare two bench "
            "results or two share results"
        )
    if True in kinds:
        return render_share(*compare_share(da, db), da, db, str(a), str(b))
    return render(compare(da, db), str(a), str(b))
