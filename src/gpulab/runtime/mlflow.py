"""Log a finished run to MLflow (`gpulab train --mlflow URI`, the `mlflow` extra).

The run's record is written first; then its settings become params, its evaluations metrics
over steps (the same tags as its TensorBoard events), its end-of-run figures final metrics, and
record.json and its plots artifacts, in the experiment `gpulab-WORKLOAD`. A server that cannot
be reached or refuses the run ends in one line naming the run folder, whose record is complete:
the run is not lost, only its copy in MLflow.
"""

import os
import re
import time
from datetime import datetime
from pathlib import Path

from gpulab.runtime.errors import GpulabError, first_line
from gpulab.runtime.records import RECORD, RunRecord
from gpulab.runtime.tensorboard import history_tag, is_number, run_scalars, run_settings

EXTRA = "pip install 'gpulab[mlflow]'"
ARTIFACT_SUFFIXES = (".png",)  # the plots; the checkpoint stays in the run folder
_BATCH = 100  # MLflow takes at most 100 params and 1000 metrics per log_batch


def check_available(uri: str) -> None:
    """Before the run: MLflow must be importable, or say which extra to install."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise GpulabError(
            f"--mlflow {uri} (or MLFLOW_TRACKING_URI) needs MLflow: {EXTRA}, or drop --mlflow "
            "and unset MLFLOW_TRACKING_URI"
        ) from None


def log_run(uri: str, record: RunRecord, run_dir: Path) -> str:
    """Log the finished run `record` (written in `run_dir`) to the tracking server or store at
    `uri`; returns the MLflow run id."""
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses its file store unless asked; --mlflow file:PATH asks for it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        return _log(uri, record, Path(run_dir))
    except Exception as e:  # the client raises its own, requests' and OS errors alike
        raise GpulabError(
            f"MLflow at {uri} did not take the run ({_reason(e)}); the run is complete in {run_dir}"
        ) from e


def _log(uri: str, record: RunRecord, run_dir: Path) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = f"gpulab-{record.workload}"
    found = client.get_experiment_by_name(name)
    experiment = found.experiment_id if found else client.create_experiment(name)
    run_id = client.create_run(
        experiment,
        run_name=run_dir.name,
        tags={"gpulab.run_dir": str(run_dir), "gpulab.status": record.status},
    ).info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in run_settings(record).items()]
    metrics = [Metric(k, v, ms, step) for k, v, ms, step in metric_points(record)]
    for i in range(0, max(len(params), len(metrics)), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH], params=params[i : i + _BATCH])
    for path in [run_dir / RECORD, *sorted(run_dir.iterdir())]:
        if path.name == RECORD or path.suffix in ARTIFACT_SUFFIXES:
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _reason(e: Exception) -> str:
    """The cause in a few words: the OS error under the client's retries (e.g. `[Errno 111]
    Connection refused`), else the first line of the client's message."""
    text = str(e).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
    if errno:
        return errno.group(0).strip()
    return first_line(e)[:200]


def metric_points(record: RunRecord) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step): every evaluation of the history at its step and time,
    then the end-of-run figures at the last step."""
    start_s = datetime.fromisoformat(record.created_utc).timestamp()
    points = []
    for row in record.history:
        ms = int((start_s + row.get("time_s", 0.0)) * 1000)
        points += [
            (history_tag(k), float(v), ms, int(row["step"]))
            for k, v in row.items()
            if k not in ("step", "time_s") and is_number(v)
        ]
    end_ms, last = int(time.time() * 1000), record.position.global_step
    return points + [(k, v, end_ms, last) for k, v in run_scalars(record).items()]
