"""`gpulab report compare A B [C ...]`: bench result sets side by side (two, or a fleet of
machines against the first), or two share results."""

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


def _check_bench(file: Path, doc: object, same_method: bool = True) -> dict:
    ok = isinstance(doc, dict) and "method_version" in doc and isinstance(doc.get("rows"), list)
    if not ok:
        raise GpulabError(f"{file} is not a gpulab bench result; pass a bench results.json")
    if same_method and doc["method_version"] != METHOD_VERSION:
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
    return _checked(*_read(path))


def _of_share_kind(file_doc: tuple[Path, object]) -> bool:
    doc = file_doc[1]
    return isinstance(doc, dict) and doc.get("kind") in ("share", "share-modes")


def _checked(file: Path, doc: object) -> dict:
    """A bench or a share result read from `file`, checked; a several-mode share result is
    pointed to one mode's folder."""
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
    index = {_key(r): r for r in a["rows"]}
    out = [_pair(index[_key(rb)], rb) for rb in b["rows"] if _comparable(index.get(_key(rb)), rb)]
    if not out:
        raise GpulabError("the two results share no workload, device and mode; nothing to compare")
    return out


def _key(row: dict) -> tuple[str, str, str]:
    return row["workload"], row["device"], row["mode"]


def _comparable(ra: dict | None, rb: dict | None) -> bool:
    return bool(ra and rb and ra.get("samples_per_s_runs") and rb.get("samples_per_s_runs"))


def _pair(ra: dict, rb: dict) -> dict:
    """B's rate against A's: the ratio of geometric means, its 95% interval and a verdict."""
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
        "workload": ra["workload"], "device": ra["device"], "mode": ra["mode"],
        "a_samples_per_s": ra["samples_per_s"]["olympic_mean"],
        "b_samples_per_s": rb["samples_per_s"]["olympic_mean"],
        "b_runs": rb["samples_per_s_runs"],
        "ratio": sp["speedup"], "low": sp["low"], "high": sp["high"], "note": note,
    }  # fmt: skip
    ta, tb = ra.get("time_to_quality"), rb.get("time_to_quality")
    if ta and tb:
        row["time_to_quality_ratio"] = ta["olympic_mean"] / tb["olympic_mean"]
    return row


# -- a fleet: several machines against the first -----------------------------------------------------


def load_fleet(read: list[tuple[Path, object]]) -> tuple[list[tuple[str, dict]], list[str]]:
    """From (file, parsed results.json) pairs: (name, results) of every bench result measured
    with the first's method, and a line per result left out; a result's name is its `--tag`,
    else its path."""
    docs = [(str(f), _check_bench(f, d, same_method=False)) for f, d in read]
    first_version = docs[0][1]["method_version"]
    kept, left = [], []
    for path, doc in docs:
        if doc["method_version"] == first_version:
            kept.append((doc.get("tag") or path, doc))
        else:
            left.append(
                f"left out: {path} was measured with method_version {doc['method_version']}, the "
                f"first with {first_version}; rerun gpulab bench there to compare it"
            )
    if len(kept) < 2:
        raise GpulabError(
            f"no two results were measured with the same method ({'; '.join(left)}); "
            "compare results of the same method"
        )
    return _unique_names(kept), left


def _unique_names(docs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    seen: dict[str, int] = {}
    out = []
    for name, doc in docs:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name} ({seen[name]})", doc))
    return out


def compare_fleet(docs: list[tuple[str, dict]]) -> tuple[list[dict], list[str]]:
    """Per (workload, device, mode) of the first machine: every machine's rate against the
    first's; and a line for each machine's rows the first lacks or it lacks."""
    first_name, first = docs[0]
    groups = []
    for ra in first["rows"]:
        machines = []
        for name, doc in docs[1:]:
            rb = next((r for r in doc["rows"] if _key(r) == _key(ra)), None)
            if _comparable(ra, rb):
                machines.append({"machine": name, **_pair(ra, rb)})
        if machines:
            groups.append({"key": _key(ra), "first": ra, "machines": machines})
    if not groups:
        raise GpulabError("the results share no workload, device and mode; nothing to compare")
    return groups, _differences(docs)


def _differences(docs: list[tuple[str, dict]]) -> list[str]:
    first_name, first = docs[0]
    mine = {_key(r) for r in first["rows"]}
    lines = []
    for name, doc in docs[1:]:
        theirs = {_key(r) for r in doc["rows"]}
        for what, keys in (("not in", mine - theirs), ("only in", theirs - mine)):
            if keys:
                rows = ", ".join(" ".join(k) for k in sorted(keys))
                lines.append(
                    f"{what} {name}: {rows}" + (" (not compared)" if what == "only in" else "")
                )
    return lines


def render_fleet(groups: list[dict], names: list[str], notes: list[str], plots=None) -> str:
    """Markdown: a table per (workload, device, mode), each machine against the first."""
    lines = ["Machines (the first is the reference):", ""]
    lines += [f"{i + 1}. {n}" for i, n in enumerate(names)]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    for g in groups:
        workload, device, mode = g["key"]
        lines += ["", f"### {workload} {mode} on {device}", ""]
        lines += [
            "| machine | samples/s | / first (geometric means) | 95% interval | note |",
            "|---|---|---|---|---|",
        ]
        lines.append(
            f"| {names[0]} | {rate_text(g['first']['samples_per_s']['olympic_mean'])} | 1 |  | reference |"
        )
        for m in g["machines"]:
            interval = "" if m["low"] is None else f"{m['low']:.2f}-{m['high']:.2f}"
            ratio = "" if m["ratio"] is None else f"{m['ratio']:.2f}"
            note = m["note"].replace("B faster", "faster").replace("A faster", "slower")
            lines.append(
                f"| {m['machine']} | {rate_text(m['b_samples_per_s'])} | {ratio} | {interval} | {note} |"
            )
        if plots and g["key"] in plots:
            lines += ["", f"![{workload} {mode} on {device}]({plots[g['key']]})"]
    return "\n".join(lines) + "\n"


def fleet_chart(group: dict, names: list[str]) -> str:
    """One workload's rate per machine (bars: olympic mean; whiskers: the runs' range), as
    base64 PNG."""
    from gpulab.bench.report import png_base64

    first = group["first"]
    rates = [
        first["samples_per_s"]["olympic_mean"],
        *[m["b_samples_per_s"] for m in group["machines"]],
    ]
    runs = [first["samples_per_s_runs"], *[m["b_runs"] for m in group["machines"]]]
    labels = [names[0], *[m["machine"] for m in group["machines"]]]

    def draw(fig):
        ax = fig.add_subplot()
        low = [r - min(x) for r, x in zip(rates, runs)]
        high = [max(x) - r for r, x in zip(rates, runs)]
        ax.bar(range(len(rates)), rates, yerr=[low, high], capsize=4, color="#2a7ab0")
        ax.set_xticks(range(len(rates)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("samples/s")
        workload, device, mode = group["key"]
        ax.set_title(f"{workload} {mode} on {device}", fontsize=10)

    return png_base64(draw, figsize=(7, 3.6))


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


def compare_text(paths: list[Path], out: Path | None = None) -> str:
    """The comparison as Markdown: two bench results (B against A), several (each against the
    first, with a chart per workload written beside `out`), or two share results."""
    if len(paths) < 2:
        raise GpulabError("report compare needs at least two result folders")
    read = [_read(p) for p in paths]
    shares = [_checked(*r) for r in read if _of_share_kind(r)]  # each says what is wrong with it
    if shares:
        if len(shares) != len(read):
            raise GpulabError(
                f"{' and '.join(map(str, paths))} mix bench and share results; compare bench "
                "results with bench results, share results with share results"
            )
        if len(paths) != 2:
            raise GpulabError("report compare takes two share results; pass two share folders")
        return render_share(*compare_share(*shares), *shares, str(paths[0]), str(paths[1]))
    if len(paths) == 2:
        a, b = (_check_bench(*r) for r in read)
        return render(compare(a, b), *map(str, paths))
    docs, left = load_fleet(read)
    groups, notes = compare_fleet(docs)
    names = [n for n, _ in docs]
    return render_fleet(groups, names, [*left, *notes], _write_charts(groups, names, out))


def _write_charts(groups: list[dict], names: list[str], out: Path | None) -> dict:
    """A PNG per workload beside the Markdown file `out` (none without it); their names."""
    import base64

    from gpulab.runtime.files import atomic_write

    if out is None:
        return {}
    written = {}
    for g in groups:
        name = f"{Path(out).stem}-{'-'.join(g['key'])}.png"
        png = base64.b64decode(fleet_chart(g, names))
        atomic_write(Path(out).parent / name, lambda f, png=png: f.write(png))
        written[g["key"]] = name
    return written
