"""A cost result as text: cells shared by the terminal table and the reports, the terminal tables,
the study line, and the one JSON line that ends the output."""

import math
from pathlib import Path


def money(value: float | None) -> str:
    """Dollars with the digits that matter: $1,014, $5.79, $0.0106, $0.000027."""
    if value is None:
        return "-"
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.{2 - math.floor(math.log10(value))}f}"


def hours(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f} h"
    if value >= 0.1:
        return f"{value:.2f} h"
    return f"{value * 3600:.3g} s"


def break_even(value: float | None, limit: float = 730.0) -> str:
    if value is None:
        return "never"
    if value > limit:
        return f"{value:,.0f} h (> {limit:.0f})"
    return f"{value:,.0f} h"


def instance(o: dict) -> str:
    if o["provider"] == "owned":
        return o["instance_type"]
    return f"{o['provider']} {o['instance_type']} ({o['region']})"


def energy(o: dict) -> str:
    kwh = o["energy_kwh_per_unit"]
    return "not measured" if kwh is None else f"{kwh:.3g}"


OPTION_COLUMNS = (
    ("device", lambda o: o["device"]),
    ("option", lambda o: o["option"]),
    ("instance", instance),
    ("$/h", lambda o: money(o["price_per_h"])),
    ("price basis", lambda o: o["price_basis"]),
    ("hours/unit", lambda o: f"{hours(o['hours_per_unit'])} {o['basis']}"),
    ("$/unit", lambda o: money(o["money_per_unit"])),
    ("kWh/unit", energy),
    ("x cheapest", lambda o: "" if o["relative_to_cheapest"] is None else f"{o['relative_to_cheapest']:.1f}x"),
    ("own wins above", lambda o: "" if o["option"] == "own" else break_even(o["break_even_h_per_month"]) + "/month"),
)  # fmt: skip


def workloads(result: dict) -> list[str]:
    return list(dict.fromkeys(o["workload"] for o in result["options"]))


def option_rows(result: dict, workload: str) -> list[list[str]]:
    chosen = [o for o in result["options"] if o["workload"] == workload]
    chosen.sort(key=lambda o: o["money_per_unit"])
    return [[fmt(o) for _, fmt in OPTION_COLUMNS] for o in chosen]


def unit_line(result: dict, workload: str) -> str:
    u = result["units"][workload]
    return f"{workload}: {u['name']} = {u['how']} ({u['basis']}); {u['source']}"


def caveats(result: dict, workload: str) -> list[str]:
    """The workload's caveats and how its energy was (or was not) found, each once."""
    chosen = [o for o in result["options"] if o["workload"] == workload]
    notes = [f"caveat: {o['caveat']}" for o in chosen if o["caveat"]]
    notes += [f"energy: {o['energy_text']}" for o in chosen]
    return list(dict.fromkeys(notes))


BREAK_EVEN_HEAD = ["device", "rented as", "rent $/device-h", "own: fixed $/month + energy $/h", "own wins above (on-demand)", "own wins above (spot)"]  # fmt: skip


def break_even_rows(result: dict) -> list[list[str]]:
    out = []
    for b in result["break_even"]:
        own = (
            "-" if b["own_fixed_per_device_month"] is None
            else f"{money(b['own_fixed_per_device_month'])} + {money(b['own_energy_per_device_h'])}"
        )  # fmt: skip
        rent = money(b["on_demand_per_device_h"])
        if b["spot_per_device_h"] is not None:
            rent += f" (spot {money(b['spot_per_device_h'])})"
        out.append(
            [
                b["device"], f"{b['provider']} {b['instance_type']}", rent, own,
                break_even(b["break_even_on_demand_h"]) + "/month",
                "-" if b["spot_per_device_h"] is None else break_even(b["break_even_spot_h"]) + "/month",
            ]
        )  # fmt: skip
    return out


def study_lines(result: dict) -> list[str]:
    s = result["study"]
    lines = []
    if s["cpu_vm"] and s["gpu_vm"]:
        c, g = s["cpu_vm"], s["gpu_vm"]
        lines.append(
            f"The study: {s['images']:,} style images took {c['hours']:g} h on a CPU VM and "
            f"{g['hours']:g} h on a GPU VM. At today's prices that is {money(c['money'])} "
            f"({c['provider']} {c['instance_type']} at {money(c['price_per_h'])}/h) against "
            f"{money(g['money'])} ({g['provider']} {g['instance_type']} at "
            f"{money(g['price_per_h'])}/h); {s['assumption']}."
        )
    for device, h in s["gpulab_hours"].items():
        lines.append(
            f"gpulab, {device}: {hours(h['hours'])} ({h['basis']}) for {s['images']:,} images of "
            "style-network training; the study's hours were per-image optimisation, a heavier "
            "method (gpulab stylize)"
        )
    return lines


def render_tables(result: dict) -> list:
    """One rich table per workload, then the break-even table."""
    from rich.table import Table

    tables = []
    for w in workloads(result):
        caption = "\n".join([unit_line(result, w), *caveats(result, w)])
        t = Table(title=f"gpulab cost: {w}", caption=caption, caption_justify="left")
        for name, _ in OPTION_COLUMNS:
            t.add_column(
                name, justify="right" if name in ("$/h", "$/unit", "x cheapest") else "left"
            )
        for row in option_rows(result, w):
            t.add_row(*row)
        tables.append(t)
    t = Table(title="owning vs renting, per device (hours of use a month)")
    for name in BREAK_EVEN_HEAD:
        t.add_column(name)
    for row in break_even_rows(result):
        t.add_row(*row)
    tables.append(t)
    return tables


def short_summary(result: dict, out: Path) -> dict:
    """The one-line JSON that ends the output: the cheapest option per workload, break-evens."""
    cheapest = {}
    for o in result["options"]:
        best = cheapest.get(o["workload"])
        if best is None or o["money_per_unit"] < best["money_per_unit"]:
            cheapest[o["workload"]] = o
    return {
        "cost": str(out),
        "method_version": result["method_version"],
        "currency": result["currency"],
        "workloads": [
            {
                "workload": w, "unit": o["unit"], "cheapest": f"{o['option']} {instance(o)}",
                "device": o["device"], "money_per_unit": o["money_per_unit"],
                "hours_per_unit": o["hours_per_unit"], "basis": o["basis"],
            }
            for w, o in cheapest.items()
        ],
        "break_even": [
            {
                "device": b["device"], "instance_type": b["instance_type"],
                "on_demand_h_per_month": b["break_even_on_demand_h"],
                "spot_h_per_month": b["break_even_spot_h"],
            }
            for b in result["break_even"]
        ],
    }  # fmt: skip
