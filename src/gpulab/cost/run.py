"""`gpulab cost`: read bench results and prices, compute, then write results.json and the reports.

Everything is read and checked before the output folder is made, so bad input leaves nothing
half written."""

from datetime import datetime, timezone
from pathlib import Path

from gpulab.cost.match import parse_maps
from gpulab.cost.model import compute, inputs_of
from gpulab.cost.onprem import load_onprem
from gpulab.cost.prices import load_prices
from gpulab.cost.report import write_reports
from gpulab.cost.results import read_bench
from gpulab.cost.table import money
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json, ensure_writable_dir


def default_out() -> Path:
    return Path("runs") / "cost" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def cost_result(
    results: list[Path],
    prices: Path | None = None,
    onprem: Path | None = None,
    own: list[str] | None = None,
    maps: list[str] | None = None,
) -> dict:
    """The cost result for bench result folders, without writing anything."""
    if not results:
        raise GpulabError(
            "give at least one bench result folder, e.g. gpulab cost runs/bench/STAMP"
        )
    table = load_prices(prices)
    servers = load_onprem(onprem, own or [])
    mapping = parse_maps(maps or [])
    measured, inputs = [], []
    for path in results:
        summary, rows = read_bench(path)
        measured += rows
        inputs.append(inputs_of(path, summary))
    return compute(measured, table, servers, mapping, inputs)


def write_cost(result: dict, out: Path | None) -> tuple[Path, list[Path]]:
    out = Path(out) if out is not None else default_out()
    if out.exists() and any(out.iterdir()):
        raise GpulabError(f"{out} exists and is not empty; choose a new --out")
    ensure_writable_dir(out)
    atomic_write_json(out / "results.json", result)
    return out, [out / "results.json", *write_reports(out, result)]


def bench_cost_line(bench_out: Path) -> str | None:
    """One line for the end of `gpulab bench`: per workload the cheapest option at the shipped
    prices, when a price row matches the bench's devices; None otherwise."""
    try:
        result = cost_result([bench_out])
    except GpulabError:
        return None
    cheapest = {}
    for o in result["options"]:
        if (
            o["workload"] not in cheapest
            or o["money_per_unit"] < cheapest[o["workload"]]["money_per_unit"]
        ):
            cheapest[o["workload"]] = o
    parts = [
        f"{w} {money(o['money_per_unit'])} ({o['option']}, {o['device']})"
        for w, o in cheapest.items()
    ]
    return f"cost per unit of work, cheapest option: {'; '.join(parts)}; details: gpulab cost {bench_out}"
