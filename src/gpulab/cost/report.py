"""The cost report: report.md and a self-contained report.html (plots embedded as PNGs, no
external assets), both built from a cost results.json dict (method_version 1)."""

import html
from pathlib import Path

from gpulab.bench.report import CSS, figures_html, html_table, md_table, png_base64
from gpulab.cost import table as text
from gpulab.runtime.files import atomic_write_text

HOW_TO_READ = (
    "Hours per unit are device-hours: the unit's samples divided by the measured samples/s "
    "(extrapolated), or the measured time to the quality target (measured). A GPU is priced as "
    "its instance's price divided by the instance's GPUs; a CPU run as the instance's price per "
    "vCPU times the threads it used. Owning is priced per device-hour at the stated utilisation. "
    "'Own wins above' is the hours of use a month above which owning the device costs less than "
    "renting it at that price (fixed cost a month / (rent per hour - electricity per hour))."
)


def _series(b: dict, limit: float):
    """Hours 0..limit and the monthly cost of renting on demand, as spot, and owning."""
    hours = [limit * i / 100 for i in range(101)]
    rent = [h * b["on_demand_per_device_h"] for h in hours]
    spot = None if b["spot_per_device_h"] is None else [h * b["spot_per_device_h"] for h in hours]
    own = [b["own_fixed_per_device_month"] + h * b["own_energy_per_device_h"] for h in hours]
    return hours, rent, spot, own


def _draw(fig, b: dict, limit: float) -> None:
    ax = fig.add_subplot()
    hours, rent, spot, own = _series(b, limit)
    ax.plot(hours, rent, label=f"rent on-demand ({b['provider']} {b['instance_type']})")
    if spot is not None:
        ax.plot(hours, spot, label="rent spot", linestyle="--")
    ax.plot(hours, own, label="own", color="black")
    for key, name in (("break_even_on_demand_h", "on-demand"), ("break_even_spot_h", "spot")):
        h = b[key]
        if h is not None and h <= limit:
            y = b["own_fixed_per_device_month"] + h * b["own_energy_per_device_h"]
            ax.plot([h], [y], "o", color="#b03a2a")
            ax.annotate(f"own = {name} at {h:,.0f} h", (h, y), textcoords="offset points",
                        xytext=(6, -14), fontsize=8)  # fmt: skip
    ax.set_xlim(0, limit)
    ax.set_ylim(bottom=0)
    device = "one CPU thread" if b["family"] == "cpu" else f"one {b['family']}"
    ax.set_xlabel(f"hours of use a month ({device})")
    ax.set_ylabel("cost a month, USD")
    ax.legend(fontsize=8)


def plot_rows(result: dict) -> list[dict]:
    """Per device with an owned server: the rent row with the cheapest on-demand device-hour."""
    best = {}
    for b in result["break_even"]:
        if b["own_fixed_per_device_month"] is None:
            continue
        seen = best.get(b["device"])
        if seen is None or b["on_demand_per_device_h"] < seen["on_demand_per_device_h"]:
            best[b["device"]] = b
    return list(best.values())


def plots(result: dict) -> list[tuple[str, str]]:
    limit = result["hours_per_month"]
    return [
        (
            f"{b['device']}: cumulative monthly cost against hours of use a month",
            png_base64(lambda fig, b=b: _draw(fig, b, limit), figsize=(7, 3.8)),
        )
        for b in plot_rows(result)
    ]


def _inputs_line(result: dict) -> str:
    parts = [f"{i['path']} ({i['mode']}, {i['created_utc']})" for i in result["inputs"]]
    return f"{result['created_utc']} · bench results: {'; '.join(parts)} · prices: {result['prices']['path']} ({result['prices']['format']})"


def _onprem_lines(result: dict) -> list[str]:
    lines = []
    for family, p in result["onprem"].items():
        src = p["sources"]
        lines.append(
            f"{family}: ${p['purchase_usd']:,.0f} for {p['devices']:g} devices ({src.get('purchase_usd', '')}); "
            f"{p['device_watts']:g} W a device ({src.get('device_watts', '')}) + {p['host_watts']:g} W host; "
            f"{p['lifetime_years']:g} years, {100 * p['utilisation']:.0f} % utilisation, "
            f"${p['electricity_usd_per_kwh']:g}/kWh ({src.get('electricity_usd_per_kwh', '')}), "
            f"PUE {p['pue']:g} ({src.get('pue', '')}), ops {100 * p['ops_share_per_year']:.0f} %/year "
            f"({src.get('ops_share_per_year', '')})"
        )  # fmt: skip
    return lines


def markdown(result: dict, images: list[tuple[str, str]]) -> str:
    head = [name for name, _ in text.OPTION_COLUMNS]
    lines = ["# gpulab cost", "", _inputs_line(result), ""]
    for w in text.workloads(result):
        lines += [f"## {w}", "", text.unit_line(result, w), ""]
        lines += md_table(head, text.option_rows(result, w))
        lines += [""] + [f"- {c}" for c in text.caveats(result, w)] + [""]
    lines += ["## Owning or renting", ""]
    lines += md_table(text.BREAK_EVEN_HEAD, text.break_even_rows(result))
    lines += ["", "## The study's 500 h vs 11 h", "", *[f"- {s}" for s in text.study_lines(result)]]
    lines += ["", "## How to read this", "", HOW_TO_READ, ""]
    lines += ["## Owned servers", "", *[f"- {s}" for s in _onprem_lines(result)], ""]
    lines += ["## Notes", "", *[f"- {n}" for n in result["notes"] + result["prices"]["notes"]], ""]
    lines += ["## Plots", "", *[f"- {t}: see report.html" for t, _ in images], ""]
    return "\n".join(lines)


COST_CSS = "td, th { text-align: left; } td:nth-child(4), td:nth-child(7) { text-align: right; }"


def html_page(result: dict, images: list[tuple[str, str]]) -> str:
    esc = html.escape
    head = [name for name, _ in text.OPTION_COLUMNS]
    sections = []
    for w in text.workloads(result):
        notes = "".join(f"<li>{esc(c)}</li>" for c in text.caveats(result, w))
        sections.append(
            f'<h2>{esc(w)}</h2><p class="note">{esc(text.unit_line(result, w))}</p>'
            f"{html_table(head, text.option_rows(result, w), f'options-{w}')}"
            + (f'<ul class="note">{notes}</ul>' if notes else "")
        )
    items = lambda xs: "".join(f"<li>{esc(x)}</li>" for x in xs)  # noqa: E731
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpulab cost</title>
<style>{CSS}{COST_CSS}</style></head>
<body>
<h1>gpulab cost</h1>
<p class="note">{esc(_inputs_line(result))}</p>
{"".join(sections)}
<h2>Owning or renting</h2>{html_table(text.BREAK_EVEN_HEAD, text.break_even_rows(result), "break-even")}
{figures_html(images)}
<h2>The study's 500 h vs 11 h</h2><ul id="study">{items(text.study_lines(result))}</ul>
<h2>How to read this</h2><p class="note">{esc(HOW_TO_READ)}</p>
<h2>Owned servers</h2><ul class="note">{items(_onprem_lines(result))}</ul>
<h2>Notes</h2><ul class="note">{items(result["notes"] + result["prices"]["notes"])}</ul>
</body></html>
"""


def write_reports(out: Path, result: dict) -> list[Path]:
    images = plots(result)
    paths = [Path(out) / "report.md", Path(out) / "report.html"]
    atomic_write_text(paths[0], markdown(result, images))
    atomic_write_text(paths[1], html_page(result, images))
    return paths
