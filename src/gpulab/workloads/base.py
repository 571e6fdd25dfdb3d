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

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    eval_every: int = 0  # steps between evaluations during training; 0: only at the end
    warmup_steps: int = 5  # excluded from throughput and step-time statistics

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

    def presets(self) -> dict[str, TrainConfig]:
        return {"default": self.config_cls()}

    def config(self, preset: str = "default", overrides: dict[str, str] | None = None):
        presets = self.presets()
        if preset not in presets:
            raise GpulabError(
                f"unknown preset {preset!r} for {self.name}; use one of {', '.join(presets)}"
            )
        cfg = apply_overrides(presets[preset], overrides or {})
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
        raise GpulabError(
            f"{run_dir} is a {kind!r} run, not a {workload.name} model; "
            f"pass a `gpulab train {workload.name}` run"
        )
    ck = load_checkpoint(Path(run_dir) / records.CHECKPOINT)
    return ck, config_from_dict(workload.config_cls, ck["config"])


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type, values: dict):
    """Rebuild a config saved in a checkpoint (JSON/pickle turn tuples into lists)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            if typing.get_origin(hints[f.name]) is tuple and isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
    return cls(**kwargs)


def _parse_value(name: str, text: str, hint) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
    try:
        if origin is tuple:
            return tuple(args[0](p) for p in text.split(",") if p.strip())
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return hint(text)
    except (TypeError, ValueError):
        raise GpulabError(
            f"--set {name}={text}: not a valid {getattr(hint, '__name__', hint)}"
        ) from None


def apply_overrides(cfg, overrides: dict[str, str]):
    """`--set key=value` pairs applied to a config, parsed by the field's declared type."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    changes = {}
    for key, text in overrides.items():
        field = key.replace("-", "_")
        if field not in names:
            raise GpulabError(f"unknown setting {key!r}; settings here: {', '.join(names)}")
        changes[field] = (
            _parse_value(key, str(text), hints[field]) if isinstance(text, str) else text
        )
    return dataclasses.replace(cfg, **changes)
