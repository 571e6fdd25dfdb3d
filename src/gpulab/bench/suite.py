"""`gpulab bench`: every workload on every device, each run in its own process."""

import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from gpulab.bench.study import SOURCE, STUDY
from gpulab.runtime import records
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json, atomic_write_text, ensure_writable_dir
from gpulab.workloads.registry import get_workload, workload_names

# Per workload: extra `gpulab train` arguments for a bench run (evaluation off the timed path).
BENCH_ARGS = {
    "stocks": ["--eval-every", "0"],
}
# Per workload: what --quick changes (stocks runs its full seed settings even then).
QUICK_ARGS: dict[str, list[str]] = {}


@dataclass
class BenchRow:
    workload: str
    device: str
    device_name: str = ""
    train_s: float | None = None
    samples_per_s: float | None = None
    metric_name: str = ""
    metric: float | None = None
    speedup_vs_cpu: float | None = None
    study_speedup: float | None = None
    run_dir: str = ""
    error: str = ""


def default_devices() -> list[str]:
    from gpulab.runtime import list_devices

    seen = []
    for d in list_devices():
        kind = "cpu" if d.kind == "cpu" else d.name if d.kind == "mps" else "cuda"
        if kind not in seen:
            seen.append(kind)
    return seen


def _run_one(workload: str, device: str, quick: bool, out: Path, threads: int | None) -> BenchRow:
    row = BenchRow(
        workload, device, study_speedup=getattr(STUDY.get(workload), "gpu_speedup", None)
    )
    cmd = [
        sys.executable,
        "-m",
        "gpulab",
        "train",
        workload,
        "--device",
        device,
        "--quiet",
        "--checkpoint-every",
        "0",
        "--out",
        str(out),
        *BENCH_ARGS.get(workload, []),
        *(QUICK_ARGS.get(workload, []) if quick else []),
        *(["--threads", str(threads)] if threads else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("run: "):
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row.error = err.removeprefix("gpulab: error: ")
        return row
    run_dir = Path(lines[-1].removeprefix("run: "))
    rec = records.read_record(run_dir)
    row.run_dir = str(run_dir)
    dev = rec["environment"]["device"]
    if "threads" in dev:
        row.device_name = (
            f"{dev['name']}, {dev['threads']} thread{'s' if dev['threads'] != 1 else ''}"
        )
    else:
        row.device_name = dev["name"]
    row.train_s = rec["timing"]["train_s"]
    row.samples_per_s = rec["timing"]["samples_per_s"]
    row.metric_name = rec["key_metric"]["name"]
    row.metric = rec["key_metric"]["value"]
    return row


def run_suite(
    workloads: list[str] | None,
    devices: str | None,
    quick: bool,
    out: Path,
    threads: int | None = None,
) -> list[BenchRow]:
    """Run the suite, print the table, save summary.json and summary.md; returns the rows."""
    from rich.console import Console

    names = workloads or [w for w in workload_names() if w in BENCH_ARGS]
    for name in names:
        get_workload(name)  # unknown names fail before anything runs
    wanted = [d.strip() for d in devices.split(",")] if devices else default_devices()
    if not wanted or any(not d for d in wanted):
        raise GpulabError(f"--devices {devices!r}: give a comma-separated list such as cpu,cuda")
    from gpulab.runtime.device import resolve_device

    for d in wanted:
        resolve_device(d)  # unknown or absent devices fail before anything runs
    ensure_writable_dir(out)
    console = Console(width=max(Console().width, 120))
    rows = []
    for name in names:
        for device in wanted:
            with console.status(f"bench: {name} on {device} ..."):
                row = _run_one(name, device, quick, out, threads)
            rows.append(row)
            state = f"error: {row.error}" if row.error else f"{row.train_s:.2f} s"
            console.print(f"  {name} on {device}: {state}")
    _add_speedups(rows)
    summary_dir = records.new_run_dir(out, "bench", "suite")
    _save(summary_dir, rows, quick)
    console.print(render_table(rows))
    if not any(r.device != "cpu" for r in rows):
        console.print(
            "no accelerator in this run: on a machine with a GPU, bench adds its row and speedup"
        )
    console.print(f"study figures: {SOURCE}")
    console.print(f"summary: {summary_dir}")
    if any(r.error for r in rows):
        raise SystemExit(1)
    return rows


def _add_speedups(rows: list[BenchRow]) -> None:
    cpu = {r.workload: r.train_s for r in rows if r.device == "cpu" and r.train_s}
    for r in rows:
        if r.train_s and r.workload in cpu:
            r.speedup_vs_cpu = cpu[r.workload] / r.train_s


def render_table(rows: list[BenchRow]):
    from rich.table import Table

    table = Table(title="gpulab bench")
    for col in (
        "workload",
        "device",
        "train time",
        "samples/s",
        "quality",
        "speedup vs CPU",
        "study reported",
    ):
        table.add_column(col, justify="left" if col in ("workload", "device") else "right")
    for r in rows:
        if r.error:
            table.add_row(r.workload, r.device, "failed", "", r.error[:60], "", "")
            continue
        table.add_row(
            r.workload,
            f"{r.device} ({r.device_name})",
            f"{r.train_s:.2f} s",
            f"{r.samples_per_s:,.0f}",
            f"{r.metric_name} {r.metric:.4g}",
            f"{r.speedup_vs_cpu:.1f}x" if r.speedup_vs_cpu else "",
            f"~{r.study_speedup:.0f}x" if r.study_speedup and r.device != "cpu" else "",
        )
    return table


def _save(summary_dir: Path, rows: list[BenchRow], quick: bool) -> None:
    atomic_write_json(
        summary_dir / "summary.json",
        {"quick": quick, "study_source": SOURCE, "rows": [asdict(r) for r in rows]},
    )
    lines = [
        "| workload | device | train s | samples/s | quality | speedup vs CPU | study |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.workload} | {r.device} | failed: {r.error} | | | | |")
            continue
        lines.append(
            f"| {r.workload} | {r.device} ({r.device_name}) | {r.train_s:.3f} | "
            f"{r.samples_per_s:,.0f} | {r.metric_name} {r.metric:.4g} | "
            f"{f'{r.speedup_vs_cpu:.1f}x' if r.speedup_vs_cpu else ''} | "
            f"{f'~{r.study_speedup:.0f}x' if r.study_speedup and r.device != 'cpu' else ''} |"
        )
    atomic_write_text(summary_dir / "summary.md", "\n".join(lines) + "\n")
