"""Run records: `<out>/<workload>/<UTC time>-<device>/record.json` plus artifacts."""

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json, ensure_writable_dir


def rate_text(x: float) -> str:
    """A rate for people: three significant figures below 100 (1.26, 21.9), whole numbers with
    thousands separators above (306, 21,924)."""
    return f"{x:,.0f}" if abs(x) >= 99.95 else f"{x:.3g}"


RECORD = "record.json"
CHECKPOINT = "checkpoint.pt"
SCHEMA_VERSION = 1


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def new_run_dir(out: Path, workload: str, device_name: str) -> Path:
    """Create a fresh, uniquely named run folder under the runs root `out`."""
    root = ensure_writable_dir(Path(out) / workload)
    safe_device = device_name.replace(":", "")
    run_dir = root / f"{utc_stamp()}-{safe_device}"
    run_dir.mkdir()
    return run_dir


def torchrun_marker(out: Path, workload: str) -> Path | None:
    """Under torchrun: the file naming this job's run folder (by torchrun's run id); else None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return Path(out) / workload / f".torchrun-{run_id}" if run_id else None


def write_record(run_dir: Path, record: dict) -> Path:
    path = Path(run_dir) / RECORD
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, **record})
    return path


def read_record(run_dir: Path) -> dict:
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise GpulabError(f"{run_dir} is not a gpulab run (no {RECORD}); pass a folder under runs/")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GpulabError(f"{path} is not a readable run record ({e}); pass another run") from e


def discard_run_dir(run_dir: Path | None) -> None:
    """Remove a run folder with neither record nor checkpoint (a run that failed before it
    saved anything); one with a checkpoint stays, to be resumed."""
    if run_dir is None or not run_dir.is_dir():
        return
    if not (run_dir / RECORD).exists() and not (run_dir / CHECKPOINT).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class RunSummary:
    run_dir: Path
    workload: str
    device: str
    created_utc: str
    status: str
    samples_per_s: float | None
    key_metric: str
    mode: str | None = None  # e.g. style: "optimize" for a `gpulab stylize` result


def list_runs(out: Path) -> list[RunSummary]:
    """Every run with a readable record under the runs root, oldest first."""
    runs = []
    for path in sorted(Path(out).glob(f"*/*/{RECORD}")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        metric = rec.get("key_metric") or {}
        runs.append(
            RunSummary(
                run_dir=path.parent,
                workload=rec.get("workload", "?"),
                device=(rec.get("environment", {}).get("device") or {}).get("name", "?"),
                created_utc=rec.get("created_utc", "?"),
                status=rec.get("status", "?"),
                samples_per_s=(rec.get("timing") or {}).get("samples_per_s"),
                key_metric=f"{metric.get('name')}={metric.get('value'):.6g}"
                if metric.get("value") is not None
                else "",
                mode=rec.get("mode"),
            )
        )
    return sorted(runs, key=lambda r: r.created_utc)
