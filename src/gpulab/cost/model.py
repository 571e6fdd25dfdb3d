"""Money, hours and energy per unit of work for every option of every measured device, and the
break-even between owning and renting. Plain functions over typed rows; the result is the dict
results.json holds (method_version 1)."""

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from gpulab.cost.match import device_family, rows_for
from gpulab.cost.onprem import HOURS_PER_MONTH, OwnedServer
from gpulab.cost.prices import PriceRow, PriceTable
from gpulab.cost.results import Measured
from gpulab.cost.units import UNITS, Unit
from gpulab.runtime.errors import GpulabError

METHOD_VERSION = 1
STUDY = {"cpu_hours": 500.0, "gpu_hours": 11.0, "images": 10_000}

CPU_ASSUMPTION = (
    "assumption: a CPU thread costs one vCPU of the instance (price / vCPUs x threads used)"
)


@dataclass(frozen=True)
class Device:
    """A measured device and how it is priced: per GPU, or per vCPU for the threads it used."""

    results: str
    device: str
    device_name: str
    family: str  # "" for the CPU
    threads: int | None
    watts: float | None  # measured average watts of one device (a GPU, or one CPU thread)
    watts_source: str

    @property
    def label(self) -> str:
        name = self.device_name or self.device
        return f"{name}, {self.threads} threads" if self.threads else name

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.results, self.device, self.device_name)


@dataclass(frozen=True)
class Option:
    workload: str
    unit: str
    basis: str  # "measured" or "extrapolated"
    how: str
    device: str  # Device.label
    results: str
    option: str  # "rent on-demand", "rent spot" or "own"
    provider: str
    instance_type: str
    region: str
    price_per_h: float  # for the device as the run used it (one GPU, or its threads)
    price_basis: str
    hours_per_unit: float
    money_per_unit: float
    energy_kwh_per_unit: float | None
    energy_text: str
    break_even_h_per_month: float | None = None  # owning vs this rent option
    relative_to_cheapest: float | None = None
    caveat: str | None = None


def device_of(m: Measured, table: PriceTable) -> Device:
    family = device_family(m.device, m.device_name, table)
    watts, source = None, "datasheet"
    if m.energy.measured:
        if m.device == "cpu" and m.energy.cpu_watts is not None and m.threads:
            watts, source = m.energy.cpu_watts / m.threads, "measured (CPU package / threads)"
        elif m.device != "cpu" and m.energy.gpu_watts is not None:
            watts, source = m.energy.gpu_watts, "measured (GPU)"
    return Device(str(m.results), m.device, m.device_name, family or "", m.threads, watts, source)


def rent_price(row: PriceRow, dev: Device, spot: bool) -> tuple[float, float, str]:
    """(price of what the run used per hour, price of one device-hour, how it was derived)."""
    price = row.spot_per_h if spot else row.on_demand_per_h
    if dev.device == "cpu":
        per_thread = price / row.vcpus if row.vcpus else price
        if not dev.threads:
            return price, per_thread, f"${price:g}/h, the whole instance (threads not stated)"
        return (
            per_thread * dev.threads,
            per_thread,
            f"${price:g}/h ÷ {row.vcpus:g} vCPUs × {dev.threads} threads",
        )
    per_gpu = price / row.accelerator_count
    if row.accelerator_count == 1:
        return per_gpu, per_gpu, f"${price:g}/h, 1 GPU"
    return per_gpu, per_gpu, f"${price:g}/h ÷ {row.accelerator_count:g} GPUs"


def hours_per_unit(unit: Unit, m: Measured) -> float | None:
    if unit.samples is None:
        return None if m.time_to_quality_s is None else m.time_to_quality_s / 3600
    return None if not m.samples_per_s else unit.samples / m.samples_per_s / 3600


def energy_per_unit(unit: Unit, m: Measured) -> tuple[float | None, str]:
    e = m.energy
    if not e.measured:
        return None, f"not measured ({e.reason})"
    if unit.samples is None:
        if e.watts is None or m.time_to_quality_s is None:
            return None, "not measured (no average watts for the time-to-quality run)"
        kwh = e.watts * m.time_to_quality_s / 3.6e6
        return kwh, f"{kwh:.3g} kWh (measured watts × time to quality)"
    kwh = e.joules_per_sample * unit.samples / 3.6e6
    return kwh, f"{kwh:.3g} kWh (measured J/sample × samples)"


def options_for(
    m: Measured, unit: Unit, table: PriceTable, servers: dict, maps: dict
) -> list[Option]:
    """Every rent option of the device's price rows, then owning it."""
    hours = hours_per_unit(unit, m)
    if hours is None:
        return []
    dev = device_of(m, table)
    kwh, energy_text = energy_per_unit(unit, m)
    caveat = unit.quick_caveat if m.mode_of_bench == "quick" else None
    base = dict(
        workload=unit.workload, unit=unit.name, basis=unit.basis, how=unit.how(),
        device=dev.label, results=dev.results, hours_per_unit=hours,
        energy_kwh_per_unit=kwh, energy_text=energy_text, caveat=caveat,
    )  # fmt: skip
    server = servers.get(dev.family)
    out = []
    for row in rows_for(m, table, maps):
        for spot in (False, True):
            if spot and row.spot_per_h is None:
                continue
            price, per_device, basis = rent_price(row, dev, spot)
            even = server.break_even_hours(per_device, dev.watts) if server else None
            out.append(
                Option(
                    **base,
                    option="rent spot" if spot else "rent on-demand",
                    provider=row.provider,
                    instance_type=row.instance_type,
                    region=row.region,
                    price_per_h=price,
                    price_basis=basis,
                    money_per_unit=price * hours,
                    break_even_h_per_month=even,
                )  # fmt: skip
            )
    if server is not None:
        out.append(own_option(base, dev, server, hours))
    return out


def own_option(base: dict, dev: Device, server: OwnedServer, hours: float) -> Option:
    count = (dev.threads or 1) if dev.device == "cpu" else 1
    per_device = server.cost_per_device_hour(dev.watts)
    what = f"{count} threads of " if dev.device == "cpu" else "1 device of "
    basis = (
        f"{what}a ${server.purchase_usd:,.0f} server of {server.devices:g}, "
        f"{100 * server.utilisation:.0f} % used, {dev.watts_source} watts"
    )
    return Option(
        **base, option="own", provider="owned", instance_type=f"{dev.family or 'cpu'} server",
        region="", price_per_h=per_device * count, price_basis=basis,
        money_per_unit=per_device * count * hours,
    )  # fmt: skip


def with_relative(options: list[Option]) -> list[Option]:
    cheapest = {}
    for o in options:
        cheapest[o.workload] = min(cheapest.get(o.workload, o.money_per_unit), o.money_per_unit)
    return [
        replace(o, relative_to_cheapest=o.money_per_unit / cheapest[o.workload])
        if cheapest[o.workload] > 0
        else o
        for o in options
    ]


def break_even_rows(devices: list[Device], table: PriceTable, servers: dict, maps, measured):
    """Per device and rent price row: hours a month above which owning beats on-demand and spot."""
    rows = []
    for dev in devices:
        server = servers.get(dev.family)
        m = next(x for x in measured if (str(x.results), x.device, x.device_name) == dev.key)
        for row in rows_for(m, table, maps):
            _, on_demand, _ = rent_price(row, dev, spot=False)
            spot = None if row.spot_per_h is None else rent_price(row, dev, spot=True)[1]
            rows.append(
                {
                    "device": dev.label, "family": dev.family or "cpu",
                    "provider": row.provider, "instance_type": row.instance_type,
                    "on_demand_per_device_h": on_demand, "spot_per_device_h": spot,
                    "own_fixed_per_device_month": server.fixed_per_device_month if server else None,
                    "own_energy_per_device_h": server.energy_per_device_hour(dev.watts)
                    if server else None,
                    "break_even_on_demand_h": server.break_even_hours(on_demand, dev.watts)
                    if server else None,
                    "break_even_spot_h": server.break_even_hours(spot, dev.watts)
                    if server and spot is not None else None,
                }
            )  # fmt: skip
    return rows


def study_restated(table: PriceTable, options: list[Option]) -> dict:
    """The study's 500 h (CPU VM) vs 11 h (GPU VM) for 10,000 style images at today's prices,
    beside gpulab's own hours for the same unit."""
    cpu = [r for r in table.rows if r.cpu_only]
    gpu = [r for r in table.rows if r.accelerator_count == 1]
    cheapest_cpu = min(cpu, key=lambda r: r.on_demand_per_h, default=None)
    cheapest_gpu = min(gpu, key=lambda r: r.on_demand_per_h, default=None)

    def priced(row, hours):
        if row is None:
            return None
        return {
            "instance_type": row.instance_type, "provider": row.provider,
            "price_per_h": row.on_demand_per_h, "hours": hours,
            "money": row.on_demand_per_h * hours,
        }  # fmt: skip

    gpulab = {}
    for o in options:
        if o.workload == "style" and o.option == "rent on-demand":
            gpulab.setdefault(o.device, {"hours": o.hours_per_unit, "basis": o.basis})
    return {
        "images": STUDY["images"],
        "cpu_vm": priced(cheapest_cpu, STUDY["cpu_hours"]),
        "gpu_vm": priced(cheapest_gpu, STUDY["gpu_hours"]),
        "assumption": "the study's VM types are not known: its hours are priced with today's "
        "cheapest CPU-only and cheapest single-GPU on-demand instance of the table",
        "gpulab_hours": gpulab,
    }


def compute(
    measured: list[Measured], table: PriceTable, servers: dict, maps: dict, inputs: list[dict]
) -> dict:
    """The whole cost result as results.json holds it."""
    options, devices, skipped = [], {}, []
    for m in measured:
        unit = UNITS.get(m.workload)
        if unit is None or m.mode != unit.mode:
            continue
        found = options_for(m, unit, table, servers, maps)
        if not found:
            skipped.append(f"{m.workload} on {m.label}: no figure for its unit")
            continue
        options += found
        dev = device_of(m, table)
        devices.setdefault(dev.key, dev)
    if not options:
        raise GpulabError(
            "no bench row holds a figure for a unit of work (" + ", ".join(UNITS) + "); run "
            "`gpulab bench` first"
        )
    options = with_relative(options)
    return {
        "method_version": METHOD_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "currency": table.currency,
        "inputs": inputs,
        "prices": {
            "path": str(table.path),
            "format": table.format,
            "notes": list(table.notes),
            "rows_used": sorted({o.instance_type for o in options if o.provider != "owned"}),
        },  # fmt: skip
        "units": {w: {**asdict(u), "basis": u.basis, "how": u.how()} for w, u in UNITS.items()},
        "onprem": {f or "cpu": s.params() for f, s in servers.items()},
        "hours_per_month": HOURS_PER_MONTH,
        "devices": [asdict(d) | {"label": d.label} for d in devices.values()],
        "options": [asdict(o) for o in options],
        "break_even": break_even_rows(list(devices.values()), table, servers, maps, measured),
        "study": study_restated(table, options),
        "notes": [CPU_ASSUMPTION, *skipped],
    }


def inputs_of(path: Path, summary: dict) -> dict:
    return {
        "path": str(path), "mode": summary.get("mode"), "created_utc": summary.get("created_utc"),
        "devices": summary.get("devices"), "bench_method_version": summary.get("method_version"),
    }  # fmt: skip
