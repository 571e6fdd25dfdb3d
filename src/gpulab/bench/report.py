"""The bench report: a terminal table, report.md, and a self-contained report.html (plots as
embedded PNGs, no external assets)."""

import base64
import html
import io
from pathlib import Path

from gpulab.runtime.files import atomic_write_text
from gpulab.runtime.records import rate_text

# -- numbers as text ------------------------------------------------------------------------------


def _rate(row: dict) -> str:
    s = row.get("samples_per_s")
    if not s:
        return "failed" if row["failed"] else ""
    text = rate_text(s["olympic_mean"])
    if s["n"] > 1:
        text += f" (IQR {rate_text(s['iqr'])})"
    return text + (" ⚠ noisy" if s["noisy"] else "")


def _speedup(row: dict) -> str:
    sp = row.get("speedup_vs_cpu")
    if not sp or row["device"] == "cpu":
        return ""
    if sp["low"] is not None:
        return f"{sp['speedup']:.1f}x [{sp['low']:.1f}-{sp['high']:.1f}]"
    return f"{sp['speedup']:.1f}x"


def _ttq(row: dict) -> str:
    t = row.get("time_to_quality")
    if row["mode"] != "quality":
        return ""
    if not t:
        return f"not reached ({row.get('reached', '0')})"
    spread = f" ±{(t['max'] - t['min']) / 2:.1f}" if t["n"] > 1 else ""
    return f"{t['olympic_mean']:.1f} s{spread} to {row['quality_metric']} {row['quality_target']:g}"


def _quality_cell(row: dict) -> str:
    if row["mode"] == "quality":
        return _ttq(row)
    if row.get("key_value") is None or row["key_metric"] == "samples_per_s":
        return ""
    return f"{row['key_metric']} {row['key_value']:.4g}"


def _mfu(row: dict) -> str:
    return "" if row.get("mfu") is None else f"{100 * row['mfu']:.1f}%"


def _memory(row: dict) -> str:
    if not row.get("peak_memory_bytes"):
        return ""
    return f"{row['peak_memory_bytes'] / 2**30:.2f} GiB"


def joules_text(joules: float) -> str:
    """Energy for people, three significant figures in J, mJ or µJ."""
    for scale, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ")):
        if abs(joules) >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules / 1e-9:.3g} nJ"


def _energy(row: dict) -> str:
    e = row.get("energy")
    if not e:
        return ""
    if e["joules_per_sample"] is None:
        return "not measured"
    measured = [n.upper() for n, s in e["sources"].items() if s["joules_per_sample"] is not None]
    watts = f", {e['watts']:.3g} W" if e["watts"] is not None else ""
    return f"{joules_text(e['joules_per_sample'])}{watts} ({'+'.join(measured)})"


def energy_notes(rows: list[dict]) -> list[str]:
    """Why energy was not measured, once per reason (a CPU row's GPU needs none)."""
    names = {"gpu": "GPU", "cpu": "CPU packages"}
    notes = {}
    for r in rows:
        for name, source in (r.get("energy") or {}).get("sources", {}).items():
            if source["reason"] and not (name == "gpu" and r["device"] == "cpu"):
                notes.setdefault(f"{names[name]}: {source['reason']}", None)
    return [f"Energy not measured — {note}." for note in notes]


def _study(row: dict) -> str:
    return f"~{row['study_speedup']:.0f}x" if row.get("study_speedup") else ""


COLUMNS = (
    ("workload", lambda r: r["workload"]),
    ("mode", lambda r: r["mode"]),
    (
        "device",
        lambda r: f"{r['device']} ({r['device_name']})" if r["device_name"] else r["device"],
    ),
    ("samples/s", _rate),
    ("quality", _quality_cell),
    (
        "data wait",
        lambda r: "" if "data_wait_fraction" not in r else f"{100 * r['data_wait_fraction']:.1f}%",
    ),
    ("MFU", _mfu),
    ("peak memory", _memory),
    ("energy/sample", _energy),
    ("speedup vs CPU", _speedup),
    ("study reported", _study),
)


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = [fmt(r) for _, fmt in COLUMNS]
        if r["failed"]:
            cells[4] = (
                cells[4] + " " if cells[4] else ""
            ) + f"failed {len(r['failed'])}: {r['failed'][0][:60]}"
        out.append(cells)
    return out


def render_table(rows: list[dict]):
    """The terminal table: devices by kind in the cells, their names in the caption, and only
    the columns that hold something."""
    from rich.table import Table

    names = dict.fromkeys(f"{r['device']}: {r['device_name']}" for r in rows if r["device_name"])
    cells = [[*c[:2], r["device"], *c[3:]] for r, c in zip(rows, table_rows(rows))]
    keep = [i for i in range(len(COLUMNS)) if any(row[i] for row in cells)]
    table = Table(title="gpulab bench", caption="; ".join(names))
    for i in keep:
        name = COLUMNS[i][0]
        table.add_column(
            name, justify="left" if name in ("workload", "mode", "device") else "right"
        )
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    return table


# -- plots ------------------------------------------------------------------------------------------


def png_base64(draw, figsize=(8, 4)) -> str:
    """A matplotlib figure drawn by `draw(fig)`, as base64 PNG for an embedded <img>."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def plots(summary: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) for every plot the results allow."""
    rows = [r for r in summary["rows"] if r.get("samples_per_s")]
    thr = [r for r in rows if r["mode"] == "throughput"]
    out = []
    if thr:
        out.append(("Throughput per device (log scale)", png_base64(lambda f: _throughput(f, thr))))
        out.append(("Step-time distributions", png_base64(lambda f: _steps(f, thr))))
        out.append(("Data-wait share of training time", png_base64(lambda f: _wait(f, thr))))
    sp = [r for r in rows if r["device"] != "cpu" and r.get("speedup_vs_cpu")]
    if sp:
        out.append(("Speedup over the CPU", png_base64(lambda f: _speedups(f, sp))))
    q = [r for r in rows if r["mode"] == "quality" and r.get("curves")]
    if q:
        out.append(("Time to quality", png_base64(lambda f: _curves(f, q))))
    return out


def _plain_log(ax) -> None:
    """A log axis with ticks at 1, 2, 5 x 10^k labelled 20, 50, 100 rather than 2 x 10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _label(r: dict) -> str:
    return f"{r['workload']}\n{r['device']}"


def _throughput(fig, rows):
    ax = fig.add_subplot()
    values = [r["samples_per_s"]["olympic_mean"] for r in rows]
    colors = ["#888888" if r["device"] == "cpu" else "#2a7ab0" for r in rows]
    ax.bar(range(len(rows)), values, color=colors)
    _plain_log(ax)
    ax.set_xticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
    ax.set_ylabel("samples/s (olympic mean)")
    for i, v in enumerate(values):
        ax.text(i, v, rate_text(v), ha="center", va="bottom", fontsize=7)


def _steps(fig, rows):
    ax = fig.add_subplot()
    data = [[1e3 * s for s in r["step_s"]] or [1e3 * r["step_median_s"]] for r in rows]
    ax.boxplot(data, showfliers=False)
    _plain_log(ax)
    ax.set_xticks(range(1, len(rows) + 1), [_label(r) for r in rows], fontsize=8)
    ax.set_ylabel("step time, ms")


def _wait(fig, rows):
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), [100 * r["data_wait_fraction"] for r in rows], color="#c77c2a")
    ax.set_xticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
    ax.set_ylabel("% of training time waiting for data")


def _speedups(fig, rows):
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        sp = r["speedup_vs_cpu"]
        err = None
        if sp["low"] is not None:
            err = [[sp["speedup"] - sp["low"]], [sp["high"] - sp["speedup"]]]
        ax.bar(i, sp["speedup"], yerr=err, color="#2a7ab0", capsize=4)
        if r.get("study_speedup"):
            ax.plot(
                i,
                r["study_speedup"],
                "k_",
                markersize=30,
                label="study reported" if i == 0 else None,
            )
    ax.set_xticks(
        range(len(rows)), [f"{r['workload']} {r['mode']}\n{r['device']}" for r in rows], fontsize=8
    )
    ax.set_ylabel("times faster than the CPU")
    if any(r.get("study_speedup") for r in rows):
        ax.legend(fontsize=8)


def _curves(fig, rows):
    ax = fig.add_subplot()
    for r in rows:
        for k, curve in enumerate(r["curves"]):
            pts = [(t, v) for t, v in curve if v is not None]
            if pts:
                t, v = zip(*pts)
                ax.plot(
                    t, v, marker=".", label=f"{r['workload']} {r['device']}" if k == 0 else None
                )
        ax.axhline(r["quality_target"], color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("wall-clock seconds from the start of the run")
    ax.set_ylabel(rows[0]["quality_metric"])
    ax.legend(fontsize=8)


# -- documents --------------------------------------------------------------------------------------


def _probe_lines(summary: dict) -> list[str]:
    probe = summary.get("probe")
    if not probe:
        return ["No probe in this run (`--no-probe`, or the probe failed)."]
    return list(probe.get("verdict") or [])


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (a "|" inside a cell becomes "/")."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]


def html_table(head: list[str], rows: list[list[str]], table_id: str, cls: str = "") -> str:
    """An HTML table, every header and cell escaped."""
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<table id="{table_id}"{klass}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'
    )


def markdown(summary: dict, images: list[tuple[str, str]]) -> str:
    head = [name for name, _ in COLUMNS]
    lines = [
        "# gpulab bench",
        "",
        (f"{summary['tag']} · " if summary.get("tag") else "")
        + f"{summary['created_utc']} · {summary['mode']} · {summary['repeats']} repeat(s) · "
        f"devices: {', '.join(summary['devices'])}"
        + (" · **interrupted: partial results**" if summary["interrupted"] else ""),
        "",
        *md_table(head, table_rows(summary["rows"])),
    ]
    lines += [
        "",
        "Throughput is total samples / total time of the timed steps (warm-up excluded), as an "
        "olympic mean over the repeats; speedups are ratios of geometric means with a 95% "
        "interval from the repeats; time to quality counts from the start of the process, "
        "evaluations included; peak memory is GPU memory allocated on accelerator rows and the "
        "process's peak RSS on CPU rows; energy per sample is the GPU's (NVML) and the CPU "
        "packages' (RAPL) energy over the timed steps, where measured. ⚠ marks repeats that "
        "disagree by more than 10%.",
        *[f"\n{note}" for note in energy_notes(summary["rows"])],
        "",
        f"Study figures: {summary['study_source']}.",
        "",
        "## Machine",
        "",
        *[f"- {line}" for line in _probe_lines(summary)],
        "",
        "## Plots",
        "",
        *[f"- {title}: see report.html" for title, _ in images],
        "",
    ]
    return "\n".join(lines)


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
.note { color: #555; font-size: 13px; }
"""


def figures_html(images: list[tuple[str, str]]) -> str:
    """(title, base64 PNG) pairs as captioned <figure>s with the PNGs embedded."""
    return "".join(
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}"></figure>'
        for title, png in images
    )


def html_page(summary: dict, images: list[tuple[str, str]]) -> str:
    esc = html.escape
    table = html_table([name for name, _ in COLUMNS], table_rows(summary["rows"]), "summary")
    figures = figures_html(images)
    machine = "".join(f"<li>{esc(line)}</li>" for line in _probe_lines(summary))
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in energy_notes(summary["rows"]))
    warn = "<p><strong>Interrupted: partial results.</strong></p>" if summary["interrupted"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpulab bench</title>
<style>{CSS}</style></head>
<body>
<h1>gpulab bench</h1>
<p class="note">{esc(summary["tag"]) + " · " if summary.get("tag") else ""}{esc(summary["created_utc"])} · {esc(summary["mode"])} ·
{summary["repeats"]} repeat(s) · devices: {esc(", ".join(summary["devices"]))}</p>{warn}
{table}
<p class="note">Throughput is total samples / total time of the timed steps (warm-up excluded),
an olympic mean over the repeats; speedups are ratios of geometric means with a 95% interval
from the repeats; time to quality counts from the start of the process, evaluations included;
peak memory is GPU memory allocated on accelerator rows and the process's peak RSS on CPU rows;
energy per sample is the GPU's (NVML) and the CPU packages' (RAPL) energy over the timed steps,
where measured. ⚠ marks repeats that disagree by more than 10%.
Study figures: {esc(summary["study_source"])}.</p>{notes}
<h2>Machine</h2><ul id="machine">{machine}</ul>
<h2>Plots</h2>{figures}
</body></html>
"""


def write_reports(out: Path, summary: dict) -> None:
    images = plots(summary)
    atomic_write_text(out / "report.md", markdown(summary, images))
    atomic_write_text(out / "report.html", html_page(summary, images))
