"""Bench results as `gpulab cost` reads them: one typed row per measured (workload, device, mode),
with its rate, its time to quality and its energy, or why a figure is missing."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gpulab.runtime.errors import GpulabError

NO_ENERGY = "no energy in this result: it predates energy recording"


@dataclass(frozen=True)
class Energy:
    """Joules per sample and average watts as the bench measured them, or None with the reason."""

    joules_per_sample: float | None
    watts: float | None
    gpu_watts: float | None
    cpu_watts: float | None
    reason: str  # "" when measured

    @property
    def measured(self) -> bool:
        return self.joules_per_sample is not None


@dataclass(frozen=True)
class Measured:
    results: Path  # the results folder
    mode_of_bench: str  # "quick" or "full"
    workload: str
    device: str  # "cpu", "cuda", "mps"
    mode: str  # "throughput" or "quality"
    device_name: str  # as the bench wrote it, e.g. "NVIDIA H100 80GB HBM3"
    threads: int | None  # CPU threads the run used, when the bench states them
    samples_per_s: float | None
    time_to_quality_s: float | None
    energy: Energy

    @property
    def label(self) -> str:
        return f"{self.device} ({self.device_name})" if self.device_name else self.device


def results_file(path: Path) -> Path:
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def read_bench(path: Path) -> tuple[dict, list[Measured]]:
    """A bench results folder (or its results.json): the summary and its measured rows."""
    file = results_file(path)
    try:
        summary = json.loads(file.read_text())
    except FileNotFoundError:
        raise GpulabError(
            f"{path}: not a bench result (no results.json); give a `gpulab bench` report folder"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GpulabError(f"{file}: not a readable bench result ({e})") from None
    if not isinstance(summary, dict) or "rows" not in summary or "mode" not in summary:
        raise GpulabError(
            f"{file}: not a bench result (no bench rows); give a `gpulab bench` report folder"
        )
    folder = file.parent
    rows = [_measured(folder, summary.get("mode", ""), r) for r in summary["rows"]]
    return summary, [r for r in rows if r is not None]


def _measured(folder: Path, bench_mode: str, row: dict) -> Measured | None:
    rate = (row.get("samples_per_s") or {}).get("olympic_mean")
    ttq = (row.get("time_to_quality") or {}).get("olympic_mean")
    if rate is None and ttq is None:
        return None  # every repeat failed
    name = row.get("device_name") or ""
    match = re.search(r", (\d+) threads$", name)
    return Measured(
        results=folder,
        mode_of_bench=bench_mode,
        workload=row["workload"],
        device=row["device"],
        mode=row["mode"],
        device_name=name[: match.start()] if match else name,
        threads=int(match.group(1)) if match else None,
        samples_per_s=rate,
        time_to_quality_s=ttq,
        energy=energy_of(row),
    )


def energy_of(row: dict) -> Energy:
    """The row's energy block (bench rows carry one since energy recording), never invented."""
    block = row.get("energy")
    if not isinstance(block, dict):
        return Energy(None, None, None, None, NO_ENERGY)
    sources = block.get("sources") or {}
    gpu, cpu = sources.get("gpu") or {}, sources.get("cpu") or {}
    jps = block.get("joules_per_sample")
    reasons = [f"{k}: {s['reason']}" for k, s in (("gpu", gpu), ("cpu", cpu)) if s.get("reason")]
    reason = "" if jps is not None else "; ".join(reasons) or "not measured (no reason given)"
    return Energy(jps, block.get("watts"), gpu.get("watts"), cpu.get("watts"), reason)
