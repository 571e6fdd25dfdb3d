"""TensorBoard event files for training runs, bench results and share results.

A training run writes into RUN/tb/, so `tensorboard --logdir runs` shows every gpulab run. It
writes once, when the run ends, from what its record holds: the evaluations' metrics at their
steps, this run's learning rate, its throughput, data-wait share, memory and MFU, and its
settings as hparams. Nothing is written, read back or synchronized while the loop steps. A
resumed run adds an event file with its own segment's evaluations beside the earlier ones.
Bench and share write their summary figures as scalars into REPORT/tb/.
"""

import math
from collections.abc import Iterable
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import ensure_writable_dir
from gpulab.runtime.records import RunRecord

FOLDER = "tb"  # RUN/tb, REPORT/tb
_NOT_SCALARS = ("step", "time_s")  # history row keys that are not metrics


def writable_folder(folder: Path) -> Path:
    """Create `folder` if needed and prove it is writable (before a run starts), or say so;
    also that the writer imports (tensorboard is a dependency, but environments drift)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise GpulabError(f"cannot write TensorBoard events ({e}); pip install tensorboard") from e
    return ensure_writable_dir(
        folder, "TensorBoard folder",
        "make it a writable folder (remove what stands in its place) and run again",
    )  # fmt: skip


def run_scalars(record: RunRecord) -> dict[str, float]:
    """A run's end-of-run figures by tag: final metrics, throughput, data wait, memory, MFU."""
    timing = record.timing
    scalars = {f"final/{k}": float(v) for k, v in record.metrics.items() if is_number(v)}
    scalars |= {
        "timing/samples_per_s": timing.samples_per_s,
        "timing/data_wait_fraction": timing.data_wait_fraction,
        "timing/step_median_s": timing.step_median_s,
        "timing/train_s": timing.train_s,
    }
    if record.memory is not None:
        scalars["memory/peak_mib"] = record.memory.peak_bytes / 2**20
    if record.efficiency is not None and record.efficiency.mfu is not None:
        scalars["efficiency/mfu"] = record.efficiency.mfu
    if record.energy is not None and record.energy.joules_per_sample is not None:
        scalars["energy/joules_per_sample"] = record.energy.joules_per_sample
    return scalars


def history_tag(name: str) -> str:
    """An evaluation row's metric as a tag: the averaged training loss, or an eval metric."""
    return "train/loss" if name == "train_loss" else f"eval/{name}"


def write_run(folder: Path, record: RunRecord, rows: Iterable[dict], learning_rate: float) -> None:
    """A finished run's event file: `rows` (this segment's evaluations) at their steps, each at
    its wall time, then `run_scalars` and the hparams at the run's last step."""
    from torch.utils.tensorboard.summary import hparams

    start = datetime.fromisoformat(record.created_utc).timestamp()
    last = record.position.global_step
    with _opened(folder) as writer:
        for row in rows:
            step, walltime = int(row["step"]), start + row.get("time_s", 0.0)
            for name, value in row.items():
                if name not in _NOT_SCALARS and is_number(value):
                    writer.add_scalar(history_tag(name), value, step, walltime=walltime)
            writer.add_scalar("train/learning_rate", learning_rate, step, walltime=walltime)
        scalars = run_scalars(record)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, last)
        wanted = (f"final/{record.key_metric.name}", "timing/samples_per_s")
        shown = {tag: scalars[tag] for tag in wanted if tag in scalars}
        for summary in hparams(_hparams(record), shown):
            writer.file_writer.add_summary(summary, last)


def write_scalars(folder: Path, scalars: dict[str, float], step: int = 0) -> None:
    """Summary figures (bench, share) as scalars at one step."""
    with _opened(folder) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)


def run_settings(record: RunRecord) -> dict:
    """The run's settings (TensorBoard hparams, MLflow params): its config and how it ran."""
    opts = record.options
    return {
        **record.config,
        "device": opts.device,
        "device_name": record.device_name,
        "precision": opts.precision,
        "compile": opts.compile,
        "cuda_graph": opts.cuda_graph,
        "world_size": opts.world_size,
    }


def _hparams(record: RunRecord) -> dict:
    """`run_settings` as the HPARAMS tab takes them: booleans, numbers and strings."""
    return {
        k: v if isinstance(v, (bool, int, float, str)) else str(v)
        for k, v in run_settings(record).items()
    }


@contextmanager
def _opened(folder: Path):
    """A SummaryWriter on `folder`, flushed and closed at the end; an OSError is one line."""
    from torch.utils.tensorboard import SummaryWriter

    try:
        writer = SummaryWriter(log_dir=str(folder))
        with closing(writer):
            yield writer
    except OSError as e:
        raise _unwritable(Path(folder), e) from e


def _unwritable(folder: Path, e: OSError) -> GpulabError:
    return GpulabError(f"cannot write TensorBoard events into {folder} ({e.strerror or e})")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
