"""Run records: `<out>/<workload>/<UTC time>-<device>/record.json` plus artifacts.

A record is a `RunRecord`: typed sections, written by `write_record` (training and `gpulab
stylize` alike) and read back by `read_record`, so every field has one name everywhere.
docs/record.md documents every field; a test keeps it complete. The JSON keeps the layout of
schema 1: a reader ignores keys it does not know and fills fields added since with null, so
adding a field needs no new version; renaming one or changing its meaning does.
"""

import dataclasses
import functools
import json
import os
import shutil
import types
import typing
from dataclasses import dataclass, field
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
OPTIMIZE = "optimize"  # the mode of a `gpulab stylize` result; training records have none


def _training_only():
    """A field of training records (written even when null), left out of stylize results."""
    return field(default=None, metadata={"modes": (None,)})


def _stylize_only():
    """A field of `gpulab stylize` results, left out of training records."""
    return field(default=None, metadata={"modes": (OPTIMIZE,)})


def _when_set():
    """A field left out of the JSON while it is None."""
    return field(default=None, metadata={"omit_none": True})


@dataclass(kw_only=True)
class Options:
    """How the run was run (not what it learned)."""

    device: str
    precision: str
    compile: bool | None = _training_only()
    cuda_graph: bool | None = _training_only()
    world_size: int | None = _training_only()
    backend: str | None = _training_only()
    max_steps: int | None = _training_only()
    resumed_from_step: int | None = _training_only()  # timing then covers this segment only


@dataclass(kw_only=True)
class Environment:
    """The software and machine the run used (runtime/environment.py describes them)."""

    gpulab_version: str
    git_sha: str | None
    python_version: str
    torch_version: str
    cuda_version: str | None
    cudnn_version: int | None
    hostname: str
    cpu_model: str
    cpu_logical_cores: int | None
    cpu_physical_cores: int | None
    cpu_usable_cores: int | None = None  # null in records written before it was kept
    torch_threads: int
    memory_bytes: int
    device: dict  # keys depend on the device type (cpu, cuda, mps), see docs/record.md


@dataclass(kw_only=True)
class Inputs:
    """The images of a `gpulab stylize` run, by path or by embedded name."""

    content: str
    style: str
    output: str | None


@dataclass(kw_only=True)
class Position:
    """Where a run stands: epochs done, steps done in the current epoch, steps done in all."""

    epoch: int
    step: int
    global_step: int


@dataclass(kw_only=True)
class Timing:
    """A training run's timing; warm-up steps, evaluations and checkpoints excluded."""

    setup_s: float
    train_s: float
    eval_and_checkpoint_s: float | None = None  # null: written before it was kept
    data_wait_s: float
    data_wait_fraction: float
    warmup_steps_excluded: int
    timed_steps: int
    samples_per_s: float
    samples_per_s_per_rank: float | None = None
    global_batch: int | None = None
    per_rank_batch: int
    step_median_s: float
    step_iqr_s: float
    step_p10_s: float
    step_p90_s: float
    clock: str
    step_s: list[float]


@dataclass(kw_only=True)
class StylizeTiming:
    """A `gpulab stylize` run's timing: one image."""

    seconds_per_image: float
    seconds_per_step_median: float
    seconds_per_step_iqr: float
    steps: int
    clock: str
    cuda_graph: bool | None = None


@dataclass(kw_only=True)
class Memory:
    """Peak memory: allocated and reserved on CUDA, resident set of the process on the host."""

    peak_allocated_bytes: int | None = _when_set()
    peak_reserved_bytes: int | None = _when_set()
    peak_rss_bytes: int | None = _when_set()
    kind: str  # "cuda" or "host"

    @property
    def peak_bytes(self) -> int:
        """The peak that matters for fitting a run: allocated on CUDA, resident on the host."""
        peak = self.peak_allocated_bytes if self.kind == "cuda" else self.peak_rss_bytes
        return peak or 0


@dataclass(kw_only=True)
class Efficiency:
    """Model FLOPs and MFU of one device, for workloads whose FLOPs are counted."""

    forward_flops_per_sample: float
    train_flops_per_sample: float
    achieved_tflops: float
    peak_column: str
    datasheet_peak_tflops: float | None
    mfu: float | None
    measured_peak_tflops: float | None
    mfu_of_measured: float | None
    peak_source: str
    probe: str | None


@dataclass(kw_only=True)
class EnergyReading:
    """One source's energy over the run's energy window (runtime/energy.py reads it)."""

    source: str | None  # "nvml-total-energy", "nvml-power-samples", "rapl"; null: not measured
    joules: float | None
    seconds: float
    watts: float | None
    reason: str | None  # why it was not measured; null when it was


@dataclass(kw_only=True)
class Energy:
    """Energy of the timed window: the GPU and the CPU packages, each measured or said why not."""

    gpu: EnergyReading
    cpu: EnergyReading
    samples: int  # samples computed in the window
    joules_per_sample: float | None  # the measured sources together; null: none was measured


@dataclass(kw_only=True)
class KeyMetric:
    """The one number `gpulab runs` and `gpulab bench` show."""

    name: str
    value: float | None
    higher_is_better: bool

    def text(self) -> str:
        return f"{self.name}={self.value:.6g}" if self.value is not None else ""


@dataclass(kw_only=True)
class Quality:
    """Time to quality: the target, and when reached the step and seconds from the start."""

    metric: str
    target: float
    higher_is_better: bool
    reached: bool
    step: int | None = _when_set()
    time_to_quality_s: float | None = _when_set()


@dataclass(kw_only=True)
class RunRecord:
    """What was run and what was measured; a stylize result has `mode` and its own sections."""

    schema_version: int = SCHEMA_VERSION
    workload: str
    mode: str | None = _stylize_only()
    status: str
    created_utc: str
    command: list[str]
    config: dict
    inputs: Inputs | None = _stylize_only()
    options: Options
    environment: Environment
    pretrained: bool | None = None
    vgg_weights: str | None = _stylize_only()
    position: Position | None = _training_only()
    timing: Timing | StylizeTiming = field(
        metadata={"by_mode": {None: Timing, OPTIMIZE: StylizeTiming}}
    )
    memory: Memory | None = _training_only()
    efficiency: Efficiency | None = _training_only()
    energy: Energy | None = _when_set()  # absent from records written before it was measured
    metrics: dict
    key_metric: KeyMetric
    verdict: str | None = _training_only()
    quality: Quality | None = _training_only()
    history: list[dict]
    artifacts: list[str]

    @property
    def device_name(self) -> str:
        return self.environment.device.get("name", "?")


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def new_run_dir(out: Path, workload: str, device_name: str) -> Path:
    """Create a fresh, uniquely named run folder under the runs root `out`."""
    root = ensure_writable_dir(Path(out) / workload)
    safe_device = device_name.replace(":", "")
    run_dir = root / f"{utc_stamp()}-{safe_device}"
    run_dir.mkdir()
    return run_dir


def only_run(out: Path) -> Path:
    """The one run folder under the runs root `out` (a root made for a single run)."""
    found = [p.parent for p in Path(out).glob(f"*/*/{RECORD}")]
    if len(found) != 1:
        raise GpulabError(f"expected one run record under {out}, found {len(found)}")
    return found[0]


def torchrun_marker(out: Path, workload: str) -> Path | None:
    """Under torchrun: the file naming this job's run folder (by torchrun's run id); else None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return Path(out) / workload / f".torchrun-{run_id}" if run_id else None


def write_record(run_dir: Path, record: RunRecord) -> Path:
    """Write `record` as the run folder's record.json, atomically."""
    path = Path(run_dir) / RECORD
    atomic_write_json(path, record_to_json(record))
    return path


def read_record(run_dir: Path) -> RunRecord:
    """The run folder's record, or a one-line error for a missing, garbled or newer record."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise GpulabError(f"{run_dir} is not a gpulab run (no {RECORD}); pass a folder under runs/")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GpulabError(f"{path} is not a readable run record ({e}); pass another run") from e
    return record_from_json(data, path)


def record_to_json(record: RunRecord) -> dict:
    """The record as record.json holds it: the sections of its mode, in schema 1's layout."""
    return _to_json(record, record.mode)


def record_from_json(data, path: Path) -> RunRecord:
    """A record from the JSON of record.json at `path` (named in the errors)."""
    try:
        _check_version(data, path)
        return _build(RunRecord, data, "")
    except _Unreadable as e:
        raise GpulabError(f"{path} is not a readable run record ({e}); pass another run") from None


def _check_version(data, path: Path) -> None:
    """Schema 1 up to this gpulab's version reads; a newer one asks for a newer gpulab."""
    if not isinstance(data, dict):
        raise _Unreadable(f"the record is {_short(data)}, not an object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _Unreadable(f"schema_version is {_short(version)}, not a version number")
    if version > SCHEMA_VERSION:
        raise GpulabError(
            f"{path} was written by a newer gpulab (schema {version}); upgrade gpulab to read it"
        )


class _Unreadable(ValueError):
    """A record.json whose content does not fit the schema."""


def _to_json(value, mode: str | None):
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if mode not in f.metadata.get("modes", (mode,)):
                continue
            if item is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _to_json(item, mode)
        return out
    if isinstance(value, list):
        return [_to_json(v, mode) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v, mode) for k, v in value.items()}
    return value


def _build(cls: type, data, where: str):
    """An instance of dataclass `cls` from a JSON object, each value checked against its type;
    keys the class does not know are ignored, fields with a default may be missing."""
    if not isinstance(data, dict):
        raise _Unreadable(f"{where or 'the record'} is {_short(data)}, not an object")
    hints = _type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            hint = _hint_of_mode(f, data) or hints[f.name]
            kwargs[f.name] = _typed(data[f.name], hint, name)
        elif f.default is dataclasses.MISSING:
            raise _Unreadable(f"it has no {name}")
    return cls(**kwargs)


@functools.cache
def _type_hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _hint_of_mode(f: dataclasses.Field, data: dict) -> type | None:
    """For a field whose type depends on the record's mode (timing), the type of this mode."""
    by_mode = f.metadata.get("by_mode")
    if by_mode is None:
        return None
    mode = data.get("mode")
    if mode not in by_mode:
        raise _Unreadable(f"mode is {_short(mode)}, not one of {', '.join(map(str, by_mode))}")
    return by_mode[mode]


def _typed(value, hint, where: str):
    """`value` checked against the type `hint` (dataclasses built, unions tried in order)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, where)
            except _Unreadable as e:
                last = e
        raise last
    if origin is list:
        if not isinstance(value, list):
            raise _Unreadable(f"{where} is {_short(value)}, not a list")
        return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    wanted = {float: (int, float), int: int, dict: dict, str: str, bool: bool}[origin or hint]
    if not isinstance(value, wanted) or (isinstance(value, bool) and hint is not bool):
        raise _Unreadable(f"{where} is {_short(value)}, not {hint.__name__}")
    return value


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
            rec = read_record(path.parent)
        except GpulabError:
            continue
        runs.append(
            RunSummary(
                run_dir=path.parent,
                workload=rec.workload,
                device=rec.device_name,
                created_utc=rec.created_utc,
                status=rec.status,
                samples_per_s=getattr(rec.timing, "samples_per_s", None),
                key_metric=rec.key_metric.text(),
                mode=rec.mode,
            )
        )
    return sorted(runs, key=lambda r: r.created_utc)
