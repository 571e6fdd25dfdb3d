"""Instance prices: gpulab's own table (prices.csv, shipped with gpulab) or a SkyPilot catalog
(`vms.csv`), read into typed rows with one currency.

gpulab's table has one row per instance and region, each with its source and date. A SkyPilot
catalog has one row per instance and availability zone in every region; gpulab keeps one row per
instance: the cheapest region that lists an on-demand price, with the lowest spot price among
that region's zones (a region's zones share one on-demand price). Rows without an instance type
(a GCP catalog prices GPUs apart from the host VM they attach to) are left out and counted.
"""

import csv
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gpulab.runtime.errors import GpulabError

SHIPPED = Path(__file__).with_name("prices.csv")

GPULAB_COLUMNS = (
    "provider", "instance_type", "accelerator", "accelerator_count", "vcpus", "memory_gib",
    "region", "on_demand_per_h", "spot_per_h", "currency", "source", "date",
)  # fmt: skip
SKYPILOT_COLUMNS = (
    "InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price",
    "SpotPrice", "Region",
)  # fmt: skip


@dataclass(frozen=True)
class PriceRow:
    """One instance type in one region. Prices are per instance-hour; `accelerator` is empty and
    `accelerator_count` 0 on a CPU-only instance."""

    provider: str
    instance_type: str
    accelerator: str
    accelerator_count: float
    vcpus: float
    memory_gib: float
    region: str
    on_demand_per_h: float
    spot_per_h: float | None
    currency: str
    source: str
    date: str

    @property
    def cpu_only(self) -> bool:
        return self.accelerator_count == 0

    @property
    def family(self) -> str:
        """The accelerator's family as gpulab matches it: "A100-80GB" and "A100" are both A100."""
        return accelerator_family(self.accelerator)


@dataclass(frozen=True)
class PriceTable:
    path: Path
    format: str  # "gpulab" or "skypilot"
    rows: tuple[PriceRow, ...]
    currency: str
    notes: tuple[str, ...] = ()

    def instance(self, instance_type: str) -> list[PriceRow]:
        return [r for r in self.rows if r.instance_type == instance_type]


def accelerator_family(name: str) -> str:
    return name.split("-")[0].strip().upper()


def load_prices(path: Path | None = None) -> PriceTable:
    """gpulab's shipped table, or the CSV at `path` in gpulab's or SkyPilot's format (told apart
    by the header). Bad input is a GpulabError naming the file, line and column."""
    path = Path(path) if path is not None else SHIPPED
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise GpulabError(f"--prices {path}: cannot read it ({e})") from None
    lines = list(csv.reader(text.splitlines()))
    if not lines or not any(cell.strip() for cell in lines[0]):
        raise GpulabError(f"{path}: empty file; give a price CSV with a header and rows")
    header = [h.strip() for h in lines[0]]
    kind = "skypilot" if "InstanceType" in header else "gpulab"
    wanted = SKYPILOT_COLUMNS if kind == "skypilot" else GPULAB_COLUMNS
    missing = [c for c in wanted if c not in header]
    if missing:
        raise GpulabError(
            f"{path}: line 1: missing column {missing[0]!r} ({kind} price table; it needs "
            f"{', '.join(wanted)})"
        )
    records = [
        (number, dict(zip(header, (c.strip() for c in cells))))
        for number, cells in enumerate(lines[1:], start=2)
        if any(c.strip() for c in cells)
    ]
    if not records:
        raise GpulabError(f"{path}: no price rows under the header")
    if kind == "skypilot":
        return _skypilot_table(path, records)
    return _gpulab_table(path, records)


def _number(path: Path, line: int, column: str, text: str, allow_empty: bool = False):
    """A non-negative number from a cell, or None for an empty cell where that is allowed."""
    if text == "" and allow_empty:
        return None
    try:
        value = float(text)
    except ValueError:
        raise GpulabError(
            f"{path}: line {line}, column {column}: {text!r} is not a number"
        ) from None
    if value != value or value < 0:
        raise GpulabError(f"{path}: line {line}, column {column}: {text!r} must be 0 or more")
    return value


def _gpulab_table(path: Path, records: list[tuple[int, dict]]) -> PriceTable:
    rows, lines = [], {}
    for line, cell in records:
        for column in ("provider", "instance_type", "region", "currency", "source", "date"):
            if not cell[column]:
                raise GpulabError(
                    f"{path}: line {line}, column {column}: empty; every row needs one"
                )
        row = PriceRow(
            provider=cell["provider"],
            instance_type=cell["instance_type"],
            accelerator=cell["accelerator"],
            accelerator_count=_number(path, line, "accelerator_count", cell["accelerator_count"]),
            vcpus=_number(path, line, "vcpus", cell["vcpus"]),
            memory_gib=_number(path, line, "memory_gib", cell["memory_gib"]),
            region=cell["region"],
            on_demand_per_h=_number(path, line, "on_demand_per_h", cell["on_demand_per_h"]),
            spot_per_h=_number(path, line, "spot_per_h", cell["spot_per_h"], allow_empty=True),
            currency=cell["currency"].upper(),
            source=cell["source"],
            date=cell["date"],
        )
        if (row.accelerator == "") != (row.accelerator_count == 0):
            raise GpulabError(
                f"{path}: line {line}, column accelerator_count: a CPU-only row has no accelerator "
                "and count 0; a GPU row names its accelerator and a count above 0"
            )
        _check_duplicate(path, line, row, rows, lines)
        rows.append(row)
        lines[id(row)] = line
    currency = _one_currency(path, records, rows)
    return PriceTable(path, "gpulab", tuple(rows), currency)


def _check_duplicate(path: Path, line: int, row: PriceRow, rows: list, lines: dict) -> None:
    for other in rows:
        if (other.instance_type, other.region) != (row.instance_type, row.region):
            continue
        if (other.on_demand_per_h, other.spot_per_h) != (row.on_demand_per_h, row.spot_per_h):
            raise GpulabError(
                f"{path}: line {line}, column on_demand_per_h: {row.instance_type} in "
                f"{row.region} already has other prices on line {lines[id(other)]}; keep one"
            )


def _one_currency(path: Path, records: list[tuple[int, dict]], rows: list[PriceRow]) -> str:
    first = rows[0].currency
    for (line, _), row in zip(records, rows):
        if row.currency != first:
            raise GpulabError(
                f"{path}: line {line}, column currency: {row.currency} in a table of {first}; "
                "one currency per table"
            )
    return first


def _skypilot_table(path: Path, records: list[tuple[int, dict]]) -> PriceTable:
    """One row per instance: the cheapest region with an on-demand price, and the lowest spot
    price among that region's zones."""
    provider = path.parent.name if path.parent.name else "catalog"
    date = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).date().isoformat()
    regions: dict[tuple[str, str], dict] = {}
    skipped = 0
    for line, cell in records:
        if not cell["InstanceType"]:
            skipped += 1
            continue
        price = _number(path, line, "Price", cell["Price"], allow_empty=True)
        spot = _number(path, line, "SpotPrice", cell["SpotPrice"], allow_empty=True)
        count = _number(path, line, "AcceleratorCount", cell["AcceleratorCount"], allow_empty=True)
        key = (cell["InstanceType"], cell["Region"])
        seen = regions.get(key)
        if seen is None:
            regions[key] = seen = {"cell": cell, "line": line, "price": price, "spots": []}
        elif price is not None and seen["price"] is not None and price != seen["price"]:
            raise GpulabError(
                f"{path}: line {line}, column Price: {key[0]} in {key[1]} costs {price:g} here "
                f"and {seen['price']:g} on line {seen['line']}; keep one"
            )
        seen["price"] = seen["price"] if seen["price"] is not None else price
        if spot is not None:
            seen["spots"].append(spot)
        seen["count"] = count or 0.0
    rows = _cheapest_regions(path, provider, date, regions)
    notes = [
        f"{path}: SkyPilot catalog; per instance the cheapest region with an on-demand price, "
        "spot = the lowest of that region's zones"
    ]
    if skipped:
        notes.append(
            f"{skipped} rows without an instance type left out (GPU prices without their host VM)"
        )
    return PriceTable(path, "skypilot", tuple(rows), "USD", tuple(notes))


def _cheapest_regions(path: Path, provider: str, date: str, regions: dict) -> list[PriceRow]:
    best: dict[str, dict] = {}
    for (instance, _), seen in regions.items():
        if seen["price"] is None:
            continue
        if instance not in best or seen["price"] < best[instance]["price"]:
            best[instance] = seen
    rows = []
    for instance, seen in best.items():
        cell = seen["cell"]
        rows.append(
            PriceRow(
                provider=provider,
                instance_type=instance,
                accelerator=cell["AcceleratorName"] if seen["count"] else "",
                accelerator_count=seen["count"],
                vcpus=_number(path, seen["line"], "vCPUs", cell["vCPUs"] or "0"),
                memory_gib=_number(path, seen["line"], "MemoryGiB", cell["MemoryGiB"] or "0"),
                region=cell["Region"],
                on_demand_per_h=seen["price"],
                spot_per_h=min(seen["spots"]) if seen["spots"] else None,
                currency="USD",
                source=f"SkyPilot catalog {path}",
                date=date,
            )
        )
    return rows
