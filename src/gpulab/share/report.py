"""The share report: report.md, a self-contained report.html (the NP chart embedded as a PNG, no
external assets) and the chart alone as np_per_job.png, all built from a share results.json
dict (method_version 1): one mode's (kind "share"), or several modes' side by side (kind
"share-modes", each mode's results under `by_mode`)."""

import base64
import html
from pathlib import Path

from gpulab.bench.report import CSS, figures_html, html_table, md_table, png_base64
from gpulab.runtime.files import atomic_write, atomic_write_text
from gpulab.runtime.records import rate_text
from gpulab.share.metrics import mean_of_known

CHART_PNG = "np_per_job.png"
CHART_TITLE = "Normalised progress (NP) per job"

HOW_TO_READ = (
    "NP (normalised progress) = a job's isolated time / its shared time for the same work: 1 "
    "means sharing cost this job nothing, 1/N is an even split of the device among N jobs. "
    "STP (system throughput) = the sum of the jobs' NP: above 1 the device did more work "
    "shared than any job alone. ANTT (average normalised turnaround time) = the mean of 1/NP, "
    "the average slowdown (1 = none, 2 = jobs took twice as long). Fairness = min NP / max NP "
    "(1 = every job slowed down alike). Failed jobs are left out of STP, ANTT and fairness."
)

# -- numbers as text ------------------------------------------------------------------------------


def _interval(mean: float | None, interval: list | None, digits: int = 2) -> str:
    if mean is None:
        return ""
    text = f"{mean:.{digits}f}"
    if interval:
        text += f" [{interval[0]:.{digits}f}-{interval[1]:.{digits}f}]"
    return text


def _rate_cell(side: dict | None) -> str:
    rate = mean_of_known((side or {}).get("samples_per_s"))
    return "" if rate is None else rate_text(rate)


def _seconds_cell(values: list | None) -> str:
    mean = mean_of_known(values)
    return "" if mean is None else f"{mean:.2f} s"


def _memory_cell(job: dict) -> str:
    peak = job.get("peak_memory_bytes")
    return f"{peak / 2**20:.0f} MiB" if peak else ""


JOB_COLUMNS = (
    ("job", lambda j: j["id"]),
    ("spec", lambda j: j["spec"]),
    ("isolated samples/s", lambda j: _rate_cell(j.get("isolated"))),
    ("shared samples/s", lambda j: _rate_cell(j.get("shared"))),
    ("turnaround", lambda j: _seconds_cell((j.get("shared") or {}).get("turnaround_s"))),
    ("NP [95% interval]", lambda j: _interval(j.get("np_mean"), j.get("np_interval"))),
    ("peak memory", _memory_cell),
    ("status", lambda j: "failed" if j.get("failed") else "ok"),
)


def job_rows(results: dict) -> list[list[str]]:
    return [[fmt(j) for _, fmt in JOB_COLUMNS] for j in results["jobs"]]


def set_rows(results: dict) -> list[list[str]]:
    """The figures of the whole set, as (figure, value) rows."""
    s = results["set"]
    ratio = s.get("aggregate_vs_best_isolated")
    return [
        ["STP (sum of NP)", _interval(s.get("stp"), s.get("stp_interval"))],
        ["ANTT (mean 1/NP)", _interval(s.get("antt"), s.get("antt_interval"))],
        ["fairness (min NP / max NP)", _interval(s.get("fairness"), None)],
        ["aggregate shared samples/s", _rate_or_blank(s.get("aggregate_samples_per_s"))],
        ["best isolated samples/s", _rate_or_blank(s.get("best_isolated_samples_per_s"))],
        ["aggregate / best isolated", "" if ratio is None else f"{ratio:.2f}x"],
    ]


def _rate_or_blank(rate: float | None) -> str:
    return "" if rate is None else rate_text(rate)


def _cpus_text(cpus: list | None) -> str:
    return "all" if not cpus else ",".join(str(c) for c in cpus)


def placement_rows(results: dict) -> list[list[str]]:
    """Per job: its cores, threads, CUDA_VISIBLE_DEVICES (a MIG instance's UUID), MPS % and a
    MIG instance's own memory."""
    rows = []
    for job_id, p in (results.get("placement") or {}).items():
        pct = p.get("mps_threads_pct")
        rows.append(
            [
                job_id,
                _cpus_text(p.get("cpus")),
                "" if p.get("threads") is None else str(p["threads"]),
                p.get("cuda_visible_devices") or "",
                "" if pct is None else f"{pct}%",
                "" if p.get("memory_bytes") is None else f"{p['memory_bytes'] / 2**30:.1f} GiB",
            ]
        )
    return rows


PLACEMENT_HEAD = ["job", "cores", "threads", "CUDA_VISIBLE_DEVICES", "MPS threads", "own memory"]


def failed_lines(results: dict) -> list[str]:
    return [
        f"{j['id']}: {j.get('error') or 'no error line'}" for j in results["jobs"] if j["failed"]
    ]


def subtitle(results: dict) -> str:
    name = results.get("device_name")
    device = f"{results['device']} ({name})" if name else results["device"]
    return (
        f"{results['created_utc']} · mode {results['mode']} · {device} · "
        f"{len(results['jobs'])} jobs · {results['repeats']} repeat(s)"
    )


# -- the chart ------------------------------------------------------------------------------------


def _np_bars(fig, by_mode: dict[str, dict]) -> None:
    """NP per job with its interval, one bar per mode side by side; a line at NP = 1 (no
    cost) and one at 1/N (an even split)."""
    ax = fig.add_subplot()
    jobs = [j["id"] for j in next(iter(by_mode.values()))["jobs"]]
    width = 0.8 / len(by_mode)
    tops = [1.15]  # the y axis holds every bar, interval and label, and the NP = 1 line
    for k, (mode, results) in enumerate(by_mode.items()):
        color = MODE_COLORS[k % len(MODE_COLORS)]
        for i, j in enumerate(results["jobs"]):
            x = i - 0.4 + width * (k + 0.5)
            if j["failed"] or j.get("np_mean") is None:
                ax.text(x, 0.02, "failed", ha="center", va="bottom", color="#b03a2a", fontsize=8)
                continue
            low_high = j.get("np_interval")
            err = (
                None
                if not low_high
                else [[j["np_mean"] - low_high[0]], [low_high[1] - j["np_mean"]]]
            )
            label = mode if i == 0 and len(by_mode) > 1 else None
            ax.bar(
                x, j["np_mean"], width=width * 0.9, yerr=err, color=color, capsize=3, label=label
            )
            top = low_high[1] if low_high else j["np_mean"]
            ax.text(x, top + 0.01, f"{j['np_mean']:.2f}", ha="center", va="bottom", fontsize=8)
            tops.append(top + 0.1)
    ax.axhline(1.0, color="black", linewidth=1, label="NP = 1: sharing cost nothing")
    fair = 1 / len(jobs)
    ax.axhline(fair, color="#c77c2a", linestyle="--", label=f"1/{len(jobs)}: an even split")
    ax.set_xticks(range(len(jobs)), jobs, fontsize=8)
    ax.set_xlim(-0.6, len(jobs) - 0.4)
    ax.set_ylim(0, max(tops) * 1.1)
    ax.set_ylabel("NP = isolated time / shared time")
    ncol = 2 + (len(by_mode) if len(by_mode) > 1 else 0)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=ncol, frameon=False)


MODE_COLORS = ("#2a7ab0", "#5aa05a", "#8a5ab0")


def by_mode(doc: dict) -> dict[str, dict]:
    """Mode -> that mode's results, for a one-mode and a several-mode document alike (empty for a
    several-mode document without them: the web lists files it did not write)."""
    return (
        (doc.get("by_mode") or {}) if doc.get("kind") == "share-modes" else {doc.get("mode"): doc}
    )


def chart(doc: dict) -> str:
    """The NP chart as base64 PNG."""
    return png_base64(lambda fig: _np_bars(fig, by_mode(doc)), figsize=(7, 3.8))


# -- documents --------------------------------------------------------------------------------------


def _failed_note(results: dict) -> list[str]:
    failed = failed_lines(results)
    if not failed:
        return ["No job failed."]
    return ["Left out of STP, ANTT and fairness:", "", *[f"- {line}" for line in failed]]


def markdown(results: dict) -> str:
    lines = [
        "# gpulab share",
        "",
        subtitle(results),
        "",
        f"**{results['conclusion']}**",
        "",
        *md_table([name for name, _ in JOB_COLUMNS], job_rows(results)),
        "",
        "## The set",
        "",
        *md_table(["figure", "value"], set_rows(results)),
        "",
        "## How to read this",
        "",
        HOW_TO_READ,
        "",
        "## Placement",
        "",
        *md_table(PLACEMENT_HEAD, placement_rows(results)),
        "",
        f"Warm-up: {results['warmup'].rstrip('.')}.",
        "",
        "## Failed jobs",
        "",
        *_failed_note(results),
        "",
        f"Command: `{' '.join(results['command'])}`",
        "",
        f"Plot: {CHART_TITLE}: see report.html and {CHART_PNG}.",
        "",
    ]
    return "\n".join(lines)


SHARE_CSS = """
.conclusion { font-size: 16px; font-weight: 600; margin: 1em 0; }
table.narrow { width: auto; }
.failed { color: #b03a2a; }
#jobs th:nth-child(3), #jobs td:nth-child(3) { text-align: right; }
#placement th, #placement td { text-align: left; }
"""


def _failed_html(results: dict) -> str:
    failed = failed_lines(results)
    if not failed:
        return "<p>No job failed.</p>"
    items = "".join(f'<li class="failed">{html.escape(line)}</li>' for line in failed)
    return f'<p>Left out of STP, ANTT and fairness:</p><ul id="failed">{items}</ul>'


def html_page(results: dict, png: str) -> str:
    esc = html.escape
    jobs = html_table([n for n, _ in JOB_COLUMNS], job_rows(results), "jobs")
    figures = html_table(["figure", "value"], set_rows(results), "set", "narrow")
    placement = html_table(PLACEMENT_HEAD, placement_rows(results), "placement", "narrow")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpulab share</title>
<style>{CSS}{SHARE_CSS}</style></head>
<body>
<h1>gpulab share</h1>
<p class="note">{esc(subtitle(results))}</p>
<p class="conclusion" id="conclusion">{esc(results["conclusion"])}</p>
{jobs}
{figures_html([(CHART_TITLE, png)])}
<h2>The set</h2>{figures}
<h2>How to read this</h2><p class="note">{esc(HOW_TO_READ)}</p>
<h2>Placement</h2>{placement}
<p class="note">Warm-up: {esc(results["warmup"].rstrip("."))}.</p>
<h2>Failed jobs</h2>{_failed_html(results)}
<p class="note">Command: <code>{esc(" ".join(results["command"]))}</code></p>
</body></html>
"""


# -- several modes side by side --------------------------------------------------------------------


def modes_subtitle(doc: dict) -> str:
    name = doc.get("device_name")
    device = f"{doc['device']} ({name})" if name else doc["device"]
    n_jobs = len(next(iter(doc["by_mode"].values()))["jobs"])
    return (
        f"{doc['created_utc']} · modes {', '.join(doc['modes'])} · {device} · {n_jobs} jobs · "
        f"{doc['repeats']} repeat(s) per mode"
    )


def modes_set_rows(doc: dict) -> list[list[str]]:
    """Each figure of the set (rows) under each mode (columns)."""
    per_mode = [set_rows(r) for r in doc["by_mode"].values()]
    return [[rows[0][0], *[r[i][1] for r in per_mode]] for i, rows in enumerate(zip(*per_mode))]


def modes_np_rows(doc: dict) -> list[list[str]]:
    """Each job's NP [interval] (rows) under each mode (columns)."""
    modes = list(doc["by_mode"].values())
    rows = []
    for i, job in enumerate(modes[0]["jobs"]):
        cells = [r["jobs"][i] for r in modes]
        rows.append(
            [
                job["id"],
                *[
                    "failed" if c["failed"] else _interval(c.get("np_mean"), c.get("np_interval"))
                    for c in cells
                ],
            ]
        )
    return rows


def _mode_markdown(mode: str, results: dict) -> list[str]:
    return [
        f"## {mode}",
        "",
        f"{subtitle(results)}. {results['conclusion']}.",
        "",
        *md_table([name for name, _ in JOB_COLUMNS], job_rows(results)),
        "",
        *md_table(PLACEMENT_HEAD, placement_rows(results)),
        "",
        *_failed_note(results),
        "",
    ]


def modes_markdown(doc: dict) -> str:
    modes = doc["modes"]
    lines = [
        "# gpulab share: modes side by side",
        "",
        modes_subtitle(doc),
        "",
        f"**{doc['conclusion']}**",
        "",
        "## The set, by mode",
        "",
        *md_table(["figure", *modes], modes_set_rows(doc)),
        "",
        "## NP per job, by mode",
        "",
        *md_table(["job", *modes], modes_np_rows(doc)),
        "",
        "## How to read this",
        "",
        HOW_TO_READ,
        "",
        f"Each mode ran its own isolated and shared rounds, one mode after the other; each "
        f"mode's folder holds its own results.json and report ({', '.join(modes)}).",
        "",
    ]
    for mode, results in doc["by_mode"].items():
        lines += _mode_markdown(mode, results)
    first = next(iter(doc["by_mode"].values()))
    lines += [
        f"Warm-up: {first['warmup'].rstrip('.')}.",
        "",
        f"Command: `{' '.join(doc['command'])}`",
        "",
        f"Plot: {CHART_TITLE}, one bar per mode: see report.html and {CHART_PNG}.",
        "",
    ]
    return "\n".join(lines)


def _mode_html(mode: str, results: dict) -> str:
    esc = html.escape
    jobs = html_table([n for n, _ in JOB_COLUMNS], job_rows(results), f"jobs-{mode}")
    placement = html_table(PLACEMENT_HEAD, placement_rows(results), f"placement-{mode}", "narrow")
    return (
        f'<h2>{esc(mode)}</h2><p class="note">{esc(subtitle(results))}. '
        f"{esc(results['conclusion'])}.</p>{jobs}{placement}{_failed_html(results)}"
    )


def modes_html(doc: dict, png: str) -> str:
    esc = html.escape
    modes = doc["modes"]
    figures = html_table(["figure", *modes], modes_set_rows(doc), "set", "narrow")
    nps = html_table(["job", *modes], modes_np_rows(doc), "np-by-mode", "narrow")
    sections = "".join(_mode_html(m, r) for m, r in doc["by_mode"].items())
    first = next(iter(doc["by_mode"].values()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpulab share: modes side by side</title>
<style>{CSS}{SHARE_CSS}</style></head>
<body>
<h1>gpulab share: modes side by side</h1>
<p class="note">{esc(modes_subtitle(doc))}</p>
<p class="conclusion" id="conclusion">{esc(doc["conclusion"])}</p>
<h2>The set, by mode</h2>{figures}
<h2>NP per job, by mode</h2>{nps}
{figures_html([(CHART_TITLE, png)])}
<h2>How to read this</h2><p class="note">{esc(HOW_TO_READ)}</p>
{sections}
<p class="note">Warm-up: {esc(first["warmup"].rstrip("."))}.</p>
<p class="note">Command: <code>{esc(" ".join(doc["command"]))}</code></p>
</body></html>
"""


def write_reports(out_dir: Path, doc: dict) -> list[Path]:
    """report.md, report.html and the NP chart as np_per_job.png in `out_dir`, each atomically;
    for several modes, each mode's own reports in its folder too."""
    out_dir = Path(out_dir)
    if doc.get("kind") == "share-modes":
        paths = [p for m, r in doc["by_mode"].items() for p in write_reports(out_dir / m, r)]
        md, page = modes_markdown, modes_html
    else:
        paths, md, page = [], markdown, html_page
    png = chart(doc)
    mine = [out_dir / "report.md", out_dir / "report.html", out_dir / CHART_PNG]
    atomic_write_text(mine[0], md(doc))
    atomic_write_text(mine[1], page(doc, png))
    atomic_write(mine[2], lambda f: f.write(base64.b64decode(png)))
    return [*mine, *paths]
