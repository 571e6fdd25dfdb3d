"""What a workload provides to the one training loop."""

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpulab.data import Batches
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError


@dataclass
class TrainConfig:
    """Fields every workload config has; each workload subclasses it with its own seed defaults."""

    epochs: int = 1  # passes over the training data
    batch_size: int = 32  # global batch, split over torchrun processes [samples]
    lr: float = 1e-3  # learning rate
    seed: int = 0  # random seed of data, initialisation and shuffling
    eval_every: int = 0  # evaluations during training; 0: only at the end [steps]
    warmup_steps: int = 5  # left out of throughput and step-time statistics [steps]

    def validate(self) -> None:
        """Raise a GpulabError naming the first out-of-range setting."""
        require(self.epochs >= 1, "epochs must be at least 1")
        require(self.batch_size >= 1, "batch_size must be at least 1")
        require(self.lr > 0, "lr must be greater than 0")
        require(self.seed >= 0, "seed must be 0 or more")
        require(self.eval_every >= 0, "eval_every must be 0 (only at the end) or more")
        require(self.warmup_steps >= 0, "warmup_steps must be 0 or more")


def require(ok: bool, problem: str) -> None:
    if not ok:
        raise GpulabError(f"{problem}; change that setting")


@dataclass(frozen=True)
class QualityTarget:
    metric: str
    target: float
    higher_is_better: bool

    def reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target


class WorkloadData(typing.Protocol):
    train: Batches


class Workload:
    """Base class: a workload names itself, its config and presets, and builds its pieces."""

    name: str = ""
    summary: str = ""
    config_cls: type[TrainConfig] = TrainConfig
    quality: QualityTarget | None = None
    key_metric: str = "loss"  # the metric `gpulab runs` and `bench` show
    higher_is_better: bool = False
    graph_safe: bool = False  # the step has static shapes and can be captured in a CUDA graph
    compile_on_gpu: bool = False  # torch.compile by default on CUDA (where torch can)
    max_cpu_threads: int | None = None  # default CPU threads capped here (small models)
    can_predict: bool = False  # `gpulab predict NAME --run RUN` uses its trained runs

    def presets(self) -> dict[str, TrainConfig]:
        return {"default": self.config_cls()}

    def config(self, preset: str = "default", overrides: dict[str, str] | None = None):
        presets = self.presets()
        if preset not in presets:
            raise GpulabError(
                f"unknown preset {preset!r} for {self.name}; use one of {', '.join(presets)}"
            )
        cfg = apply_overrides(presets[preset], overrides or {}, self.name)
        cfg.validate()
        return cfg

    def build_data(self, cfg: Any, device: torch.device, dist: DistInfo) -> WorkloadData:
        raise NotImplementedError

    def build_model(self, cfg: Any, data: WorkloadData) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(
        self, cfg: Any, model: nn.Module, capturable: bool
    ) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss(
        self, model: nn.Module, batch: tuple[torch.Tensor, ...], data: WorkloadData
    ) -> torch.Tensor:
        """Forward pass and scalar loss for one (per-rank) batch; `data` holds anything else the
        loss needs (e.g. the style workload's frozen VGG), so the workload keeps no state."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: WorkloadData) -> dict[str, torch.Tensor]:
        """Periodic evaluation: scalar device tensors, so that nothing synchronizes."""
        return {}

    def finish(self, model: nn.Module, data: WorkloadData, run_dir: Path, history: list) -> dict:
        """Final metrics (plain floats) and artifacts, on rank 0 after training."""
        return {}

    def default_precision(self, device: torch.device) -> str:
        """What `--precision auto` (the default) means for this workload on `device`."""
        return "fp32"

    def quality_target(self, cfg: Any) -> QualityTarget | None:
        """The metric and value whose first crossing gives the run's time to quality."""
        return self.quality

    def quality_eval(self, model: nn.Module, data: WorkloadData) -> dict[str, float]:
        """The quality-target metric when `evaluate` does not give it (time-to-quality runs)."""
        return {}

    def flops(self, cfg: Any, model: nn.Module, data: WorkloadData) -> dict[str, float] | None:
        """Model FLOPs per sample {'forward', 'train'} (runtime.flops.count_flops), if known."""
        return None

    def pretrained(self, data: WorkloadData) -> bool | None:
        """Whether pretrained weights were used; None where the workload never uses any."""
        return None

    def verdict(self, metrics: dict) -> str | None:
        """One plain sentence on what the final metrics mean, if the workload has one."""
        return None

    def extra_state(self, data: WorkloadData) -> dict:
        """Plain data a checkpoint must hold to use the model later (e.g. a fitted scaler)."""
        return {}


def load_trained(run_dir: Path, workload: "Workload") -> tuple[dict, TrainConfig]:
    """The checkpoint and config of a `gpulab train WORKLOAD` run, or a one-line error."""
    from gpulab.runtime import records
    from gpulab.runtime.checkpoint import load_checkpoint

    kind = records.read_record(run_dir).workload
    if kind != workload.name:
        raise GpulabError(_not_this_workload(run_dir, kind, workload.name))
    ck = load_checkpoint(Path(run_dir) / records.CHECKPOINT)
    return ck, config_from_dict(workload.config_cls, ck["config"])


def _not_this_workload(run_dir: Path, kind: Any, wanted: str) -> str:
    """The message for a run of another workload: which `gpulab predict` verb fits it, if any."""
    from gpulab.workloads.registry import get_workload, workload_names

    if kind in workload_names() and get_workload(kind).can_predict:
        fix = f"use gpulab predict {kind} --run {run_dir}"
    else:
        fix = f"pass a `gpulab train {wanted}` run"
    return f"{run_dir} is a {kind} run, not a {wanted} run; {fix}"


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# config fields renamed since records were first written: old name -> new name
RENAMED_FIELDS = {"steps": "steps_per_epoch"}


def config_from_dict(cls: type, values: dict):
    """Rebuild a config saved in a checkpoint (JSON/pickle turn tuples into lists); a field
    saved under its old name (RENAMED_FIELDS) is read into its new one."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {RENAMED_FIELDS.get(k, k) if k not in names else k: v for k, v in values.items()}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            if typing.get_origin(hints[f.name]) is tuple and isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
    return cls(**kwargs)


def _plain_hint(hint) -> tuple[Any, bool]:
    """The field's type without `| None`, and whether None is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def type_text(hint) -> str:
    """A field's type as `--set` takes it: int, float, str, true/false, ints (comma-separated)."""
    plain, optional = _plain_hint(hint)
    if typing.get_origin(plain) is tuple:
        text = f"{typing.get_args(plain)[0].__name__}s, comma-separated"
    else:
        text = "true/false" if plain is bool else getattr(plain, "__name__", str(plain))
    return f"{text} or none" if optional else text


def _parse_value(name: str, text: str, hint) -> Any:
    plain, optional = _plain_hint(hint)
    if optional and text.lower() in ("none", ""):
        return None
    try:
        if typing.get_origin(plain) is tuple:
            return tuple(typing.get_args(plain)[0](p) for p in text.split(",") if p.strip())
        if plain is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return plain(text)
    except (TypeError, ValueError):
        raise GpulabError(f"--set {name}={text}: {name} must be {type_text(hint)}") from None


def apply_overrides(cfg, overrides: dict[str, str], workload: str = ""):
    """`--set key=value` pairs applied to a config, parsed by the field's declared type."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    changes = {}
    for key, text in overrides.items():
        field = key.replace("-", "_")
        if field not in names:
            where = f" for {workload}" if workload else ""
            raise GpulabError(
                f"unknown setting {key!r}{where}; valid keys: {', '.join(names)}"
                + (f" (gpulab workloads {workload} explains each)" if workload else "")
            )
        changes[field] = (
            _parse_value(key, str(text), hints[field]) if isinstance(text, str) else text
        )
    return dataclasses.replace(cfg, **changes)


@dataclass(frozen=True)
class FieldDoc:
    """One config field as `gpulab workloads NAME` shows it."""

    name: str
    type: str
    default: Any
    unit: str
    meaning: str


def field_docs(cls: type, defaults: Any = None) -> list[FieldDoc]:
    """Every field of a config dataclass with its type, default (from `defaults`, else the
    class's), unit and meaning. Meaning and unit come from the comment on the field's line in the
    nearest class that comments it, written `# meaning [unit]`, so configs stay plain code."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        comments.update(_field_comments(klass))
    hints = typing.get_type_hints(cls)
    defaults = defaults if defaults is not None else cls()
    docs = []
    for f in dataclasses.fields(cls):
        meaning, unit = _split_unit(comments.get(f.name, ""))
        docs.append(
            FieldDoc(f.name, type_text(hints[f.name]), getattr(defaults, f.name), unit, meaning)
        )
    return docs


def _field_comments(klass: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class body ('' where the source is gone)."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    by_line = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    body = ast.parse(source).body[0].body
    return {
        node.target.id: by_line[node.lineno]
        for node in body
        if isinstance(node, ast.AnnAssign) and node.lineno in by_line
    }


def _split_unit(comment: str) -> tuple[str, str]:
    """'training crop side [pixels]' -> ('training crop side', 'pixels')."""
    if comment.endswith("]") and "[" in comment:
        meaning, unit = comment[:-1].rsplit("[", 1)
        return meaning.strip(), unit.strip()
    return comment, ""
