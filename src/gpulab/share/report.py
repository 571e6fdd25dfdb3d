"""The share report: report.md, a self-contained report.html (the NP chart embedded as a PNG, no
external assets) and the chart alone as np_per_job.png, all built from a share results.json
dict (method_version 1)."""

import base64
import html
from pathlib import Path

from gpulab.bench.report import CSS, figures_html, md_table, png_base64
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
    """Per job: its cores, threads, CUDA_VISIBLE_DEVICES (a MIG instance's UUID) and MPS %."""
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
            ]
        )
    return rows


PLACEMENT_HEAD = ["job", "cores", "threads", "CUDA_VISIBLE_DEVICES", "MPS threads"]


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


def _np_bars(fig, jobs: list[dict]) -> None:
    """NP per job with its interval, a line at NP = 1 (no cost) and one at 1/N (fair share)."""
    ax = fig.add_subplot()
    tops = [1.15]  # the y axis holds every bar, interval and label, and the NP = 1 line
    for i, j in enumerate(jobs):
        if j["failed"] or j.get("np_mean") is None:
            ax.text(i, 0.02, "failed", ha="center", va="bottom", color="#b03a2a", fontsize=9)
            continue
        low_high = j.get("np_interval")
        err = None if not low_high else [[j["np_mean"] - low_high[0]], [low_high[1] - j["np_mean"]]]
        ax.bar(i, j["np_mean"], yerr=err, color="#2a7ab0", capsize=4)
        top = low_high[1] if low_high else j["np_mean"]
        ax.text(i, top + 0.01, f"{j['np_mean']:.2f}", ha="center", va="bottom", fontsize=8)
        tops.append(top + 0.1)
    ax.axhline(1.0, color="black", linewidth=1, label="NP = 1: sharing cost nothing")
    fair = 1 / len(jobs)
    ax.axhline(fair, color="#c77c2a", linestyle="--", label=f"1/{len(jobs)}: an even split")
    ax.set_xticks(range(len(jobs)), [j["id"] for j in jobs], fontsize=8)
    ax.set_xlim(-0.6, len(jobs) - 0.4)
    ax.set_ylim(0, max(tops) * 1.1)
    ax.set_ylabel("NP = isolated time / shared time")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)


def chart(results: dict) -> str:
    """The NP chart as base64 PNG."""
    return png_base64(lambda fig: _np_bars(fig, results["jobs"]), figsize=(7, 3.8))


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


def _html_table(head: list[str], rows: list[list[str]], table_id: str, cls: str = "") -> str:
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<table id="{table_id}"{klass}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'
    )


def _failed_html(results: dict) -> str:
    failed = failed_lines(results)
    if not failed:
        return "<p>No job failed.</p>"
    items = "".join(f'<li class="failed">{html.escape(line)}</li>' for line in failed)
    return f'<p>Left out of STP, ANTT and fairness:</p><ul id="failed">{items}</ul>'


def html_page(results: dict, png: str) -> str:
    esc = html.escape
    jobs = _html_table([n for n, _ in JOB_COLUMNS], job_rows(results), "jobs")
    figures = _html_table(["figure", "value"], set_rows(results), "set", "narrow")
    placement = _html_table(PLACEMENT_HEAD, placement_rows(results), "placement", "narrow")
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


def write_reports(out_dir: Path, results: dict) -> list[Path]:
    """report.md, report.html and the NP chart as np_per_job.png in `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    png = chart(results)
    paths = [out_dir / "report.md", out_dir / "report.html", out_dir / CHART_PNG]
    atomic_write_text(paths[0], markdown(results))
    atomic_write_text(paths[1], html_page(results, png))
    atomic_write(paths[2], lambda f: f.write(base64.b64decode(png)))
    return paths
