"""The only place the web app reads run records: what the pages show of a run, as JSON."""

from pathlib import Path

from gpulab.runtime import records
from gpulab.runtime.errors import GpulabError
from gpulab.web.errors import ApiError


def run_json(run: records.RunSummary, runs_root: Path) -> dict:
    """One row of /api/runs: the run's id (its folder under the runs root), figures and plots."""
    rel = run.run_dir.relative_to(runs_root)
    return {
        "id": str(rel),
        "workload": run.workload,
        "device": run.device,
        "created_utc": run.created_utc,
        "status": run.status,
        "samples_per_s": run.samples_per_s,
        "key_metric": run.key_metric,
        "mode": run.mode,
        "plots": [f"/files/runs/{rel}/{p.name}" for p in sorted(run.run_dir.glob("*.png"))],
    }


def runs_json(runs_root: Path) -> list[dict]:
    """Every readable run under the runs root, newest first."""
    return [run_json(r, runs_root) for r in reversed(records.list_runs(runs_root))]


def is_stylize_result(run_dir: Path) -> bool:
    """Whether a style run is a `gpulab stylize` result (which has no network to apply)."""
    try:
        return records.read_record(run_dir).mode == records.OPTIMIZE
    except GpulabError as e:
        raise ApiError(400, str(e)) from None


def stylize_figures(record: records.RunRecord) -> dict:
    """What a style job reports of the record `run_stylize` wrote."""
    return {
        "seconds": record.timing.seconds_per_image,
        "pretrained": record.pretrained,
    }
