"""The one training loop every workload uses.

The workload supplies data, a model, an optimizer, a loss and metrics; this module owns the
rest, applied from outside the model in one fixed order: placement, precision, DDP,
torch.compile, CUDA graph. A run has three phases, each fed by what the one before returned:
`_setup` builds everything once (a frozen `_Setup`), `_Loop` only steps (timed by a
`StepMeter` without synchronizing on the hot path; evaluations are not read back until the
end), `_finish` writes the last checkpoint and the run record. A stopped run resumes exactly
where it stopped.
"""

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from gpulab.runtime import records, tensorboard
from gpulab.runtime.checkpoint import (
    load_checkpoint,
    load_weights,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from gpulab.runtime.device import (
    capture_graph,
    default_cpu_threads,
    on_side_stream,
    pick_fastest_kernels,
    resolve_device,
    set_cpu_threads,
    synchronize,
)
from gpulab.runtime.distributed import (
    DistInfo,
    cleanup_distributed,
    from_rank0,
    init_distributed,
    local_device,
    print0,
    seed_everything,
)
from gpulab.runtime.energy import EnergyMeter, energy_of, summed_over_processes
from gpulab.runtime.environment import describe_device, describe_environment
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_text, ensure_writable_dir
from gpulab.runtime.flops import DatasheetPeak
from gpulab.runtime.precision import Precision, resolve_precision
from gpulab.runtime.progress import ProgressBar
from gpulab.runtime.records import Position
from gpulab.runtime.timing import StepMeter, StepTiming, now
from gpulab.workloads.base import Workload, config_from_dict, config_to_dict
from gpulab.workloads.registry import get_workload


@dataclass
class TrainOptions:
    """How to run (not what to learn): device, precision, speed features, output."""

    device: str = "auto"
    precision: str = "auto"  # auto: the workload's choice for the device
    # True, False, "auto" (compile where torch can, else eager), or None: the workload's default,
    # "auto" on CUDA for workloads whose measured step is faster compiled, else False
    compile: bool | str | None = None
    cuda_graph: bool | None = None  # None: on for CUDA when the workload's step allows it
    max_steps: int | None = None  # stop after this many steps (a resumable, stopped run)
    checkpoint_every_epochs: int = 1  # 0: only at the end
    out: Path = Path("runs")
    threads: int | None = None  # CPU threads for torch; None: OMP_NUM_THREADS or physical cores
    quiet: bool = False
    probe: Path | None = None  # a `gpulab probe --json` file: MFU also against its measured peak
    # the training device's datasheet peak (gpulab.probe.peaks.training_peak): MFU against it;
    # None: "peak unknown" (CPUs, unknown GPUs, callers that do not look it up)
    datasheet_peak: DatasheetPeak | None = None
    stop_at_quality: bool = False  # time-to-quality runs: stop at the first evaluation on target
    mlflow: str | None = None  # an MLflow tracking URI: the finished run is logged there
    # called with the global step count after each step (e.g. a fault injected by a test)
    on_step: tuple[Callable[[int], None], ...] = ()
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class TrainResult:
    run_dir: Path | None  # None on ranks other than 0
    record: records.RunRecord | None  # None on ranks other than 0


def train(
    workload_name: str,
    cfg=None,
    options: TrainOptions | None = None,
    resume: Path | None = None,
) -> TrainResult:
    """Train `workload_name` with config `cfg` (default preset if None), or resume a run."""
    options = options or TrainOptions()
    workload = get_workload(workload_name)
    if options.mlflow:  # before any work: a missing extra costs nothing
        from gpulab.runtime.mlflow import check_available

        check_available(options.mlflow)
    set_cpu_threads(cpu_threads(options.threads, workload))
    device = local_device(resolve_device(options.device))
    dist = init_distributed(device)
    try:
        if resume is None:  # after torchrun restarts the workers, all ranks resume alike
            resume = from_rank0(
                _torchrun_restart_dir(options.out, workload.name) if dist.is_main else None
            )
        checkpoint = _load_resume(Path(resume), workload) if resume is not None else None
        if checkpoint is not None:
            cfg = config_from_dict(workload.config_cls, checkpoint["config"])
        name = _precision_name(options.precision, workload, device, checkpoint)
        precision = resolve_precision(name, device)
        cfg = cfg if cfg is not None else workload.config()
        cfg.validate()
        hooks = (*options.on_step, *_injected_failure(dist))
        run = _Run(workload, cfg, options, device, precision, dist, checkpoint, resume, hooks)
        return _train(run)
    except torch.OutOfMemoryError:
        raise GpulabError(
            f"out of {device.type.upper()} memory at batch size {cfg.batch_size}; pass a smaller "
            "--set batch_size=N"
            + (" or --set auto_batch=true" if hasattr(cfg, "auto_batch") else "")
        ) from None
    finally:
        cleanup_distributed()


def _precision_name(option: str, workload: Workload, device, checkpoint: dict | None) -> str:
    """--precision as given, the workload's choice for `auto`; a resumed run keeps its own."""
    saved = checkpoint.get("precision") if checkpoint else None  # runs saved before it was kept
    if saved and option not in ("auto", saved):
        raise GpulabError(
            f"--resume continues a {saved} run (its optimizer and scaler state are {saved}'s); "
            f"drop --precision {option}"
        )
    name = saved or option
    return workload.default_precision(device) if name == "auto" else name


def _load_resume(run_dir: Path, workload: Workload) -> dict:
    """A finished or stopped run has a record; a run whose workers died has only a checkpoint."""
    if (run_dir / records.RECORD).is_file() or not (run_dir / records.CHECKPOINT).is_file():
        kind = records.read_record(run_dir).workload  # raises when it is not a run
        if kind != workload.name:
            raise GpulabError(
                f"--resume {run_dir} is a {kind!r} run, not {workload.name!r}; "
                f"resume it with `gpulab train {kind}`"
            )
    return load_checkpoint(run_dir / records.CHECKPOINT)


def _torchrun_restart_dir(out: Path, workload: str) -> Path | None:
    """Under torchrun, the run folder this job (its rendezvous id) left unfinished with a
    checkpoint: after torchrun restarts the workers (--max-restarts), or when a scheduler
    starts the same job again (a requeue). Asked on rank 0 only: a node whose workers were
    restarted because another node failed does not count a restart, so no rank decides by
    TORCHELASTIC_RESTART_COUNT."""
    marker = records.torchrun_marker(out, workload)
    if marker is None or not marker.is_file():
        return None
    run_dir = Path(marker.read_text().strip())
    if not (run_dir / records.CHECKPOINT).is_file():
        return None
    try:
        finished = records.read_record(run_dir).status == "complete"
    except GpulabError:  # workers that died leave a checkpoint and no record
        finished = False
    return None if finished else run_dir


def _injected_failure(dist: DistInfo) -> tuple[Callable[[int], None], ...]:
    """GPULAB_FAIL_AT_STEP=N: an `on_step` hook that makes the last rank exit at global step N
    on torchrun's first attempt, a fault to watch torchrun restart the workers and gpulab resume
    them; no hook when it is unset."""
    step = os.environ.get("GPULAB_FAIL_AT_STEP", "")
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if not (step.isdigit() and first_attempt and dist.rank == dist.world_size - 1):
        return ()
    fail_at = int(step)

    def die(global_step: int) -> None:
        if global_step == fail_at:
            os._exit(1)  # a worker dies, as a killed one would

    return (die,)


BARRIER_TIMEOUT_S = 600.0  # how long a job waits for the others' setup at a start barrier


def _wait_at_start_barrier(timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """GPULAB_START_BARRIER=DIR (`gpulab share`): after setup, write DIR/ready-<pid> and wait
    until DIR/go exists, so that jobs sharing a device start their timed steps together; nothing
    when it is unset."""
    folder = os.environ.get("GPULAB_START_BARRIER", "")
    if not folder:
        return
    barrier = Path(folder)
    (barrier / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise GpulabError(f"no start signal in {barrier} after {timeout_s:.0f} s; giving up")
        time.sleep(0.01)


# -- the phases of a run -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What a run is given, fixed before it starts."""

    workload: Workload
    cfg: Any  # as asked for: `auto_batch` is resolved by the setup
    options: TrainOptions
    device: torch.device
    precision: Precision
    dist: DistInfo
    checkpoint: dict | None  # a resumed run's
    resume_dir: Path | None
    on_step: tuple[Callable[[int], None], ...]


@dataclass(frozen=True)
class _Setup:
    """Everything built before the first step; the loop and the finish only read it."""

    cfg: Any  # `auto_batch` resolved
    data: Any
    model: nn.Module  # unwrapped: checkpoints, evaluation, FLOPs
    train_model: nn.Module  # under DDP and torch.compile: the step's forward
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_sum: torch.Tensor  # every step adds its loss on the device; evaluations read it
    step_fn: Callable  # one training step on a batch (a CUDA graph replay when captured)
    use_graph: bool
    compile: bool
    start: Position  # where this segment starts (a resumed run: where it stopped)
    history: tuple[dict, ...]  # evaluations of earlier segments
    measured_peaks: dict | None  # from --probe
    started_utc: str
    setup_s: float


def _train(run: _Run) -> TrainResult:
    """Setup, loop, finish; a run that fails before its first checkpoint leaves no folder."""
    s = _setup(run)
    run_dir = _create_run_dir(run)
    if run.dist.distributed:
        batch, world = s.data.train.batch_size, run.dist.world_size
        print0(
            f"{world} processes ({run.dist.backend}): the global batch of {batch} is kept "
            f"constant, {batch // world} samples per process"
        )
    if run.dist.is_main:
        _wait_at_start_barrier()  # outside the timed steps: the StepMeter starts in the loop
    try:
        loop = _Loop(run, s, run_dir).run_steps()
    except BaseException:
        if run.resume_dir is None:
            records.discard_run_dir(run_dir)
        raise
    return TrainResult(run_dir, _finish(run, s, loop, run_dir))


def _setup(run: _Run) -> _Setup:
    """Build data, model, optimizer and step in the fixed order; `setup_s` covers all of it."""
    started = now()  # time-to-quality starts before any data is touched
    started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if run.dist.is_main and run.resume_dir is None:
        ensure_writable_dir(run.options.out)
    compile_ = _compile_wanted(run)
    measured = _measured_peaks(run)
    if run.workload.graph_safe:  # static shapes; before the batch search, whose steps
        pick_fastest_kernels(run.device)  # must use the kernels (and workspace) of the run
    cfg = run.cfg
    if getattr(cfg, "auto_batch", False) and run.checkpoint is None:
        cfg = replace(cfg, batch_size=_auto_batch(run, cfg), auto_batch=False)
    seed_everything(cfg.seed)
    data = run.workload.build_data(cfg, run.device, run.dist)
    model = run.workload.build_model(cfg, data).to(run.device)
    use_graph = _use_cuda_graph(run)
    optimizer = run.workload.build_optimizer(cfg, model, capturable=use_graph)
    scaler = run.precision.grad_scaler(run.device)
    start, history = _restore(run, model, optimizer, scaler, use_graph)
    train_model = _wrap(run, model, compile_)
    loss_sum = torch.zeros((), device=run.device)
    step_fn = _make_step(run, train_model, data, optimizer, scaler, loss_sum, not use_graph)
    if use_graph:
        step_fn = _GraphedStep(step_fn, data.train, model, optimizer)
    synchronize(run.device)
    return _Setup(
        cfg, data, model, train_model, optimizer, scaler, loss_sum, step_fn, use_graph,
        compile_, start, history, measured, started_utc, setup_s=now() - started,
    )  # fmt: skip


def _measured_peaks(run: _Run) -> dict | None:
    """Read before any work, so that a wrong --probe file costs nothing."""
    if run.options.probe is None:
        return None
    from gpulab.runtime.flops import measured_peaks

    return measured_peaks(run.options.probe, describe_device(run.device)["name"])


def _compile_wanted(run: _Run) -> bool:
    wanted = compile_setting(run.options.compile, run.workload, run.device)
    if not wanted:
        return False
    problem = compile_unavailable(run.device)
    if problem and wanted == "auto":
        print0(f"gpulab: torch.compile is not available here ({problem}); running eager")
        return False
    if problem:
        raise GpulabError(
            f"torch.compile is not available here ({problem}); pass --compile off, or "
            "--compile auto to run without it where it is unavailable"
        )
    if not run.options.quiet:
        print0("gpulab: torch.compile on: the first steps compile the model (up to a minute)")
    return True


def _auto_batch(run: _Run, cfg) -> int:
    """The largest global batch whose real training step fits in device memory."""
    from gpulab.runtime.memory import search_batch

    if run.device.type != "cuda":
        print0(
            f"auto_batch searches GPU memory; on {run.device.type} the batch stays {cfg.batch_size}"
        )
        return cfg.batch_size
    world = run.dist.world_size
    chosen, tried = search_batch(
        lambda batch: _batch_fits(run, replace(cfg, batch_size=batch * world)),
        start=cfg.batch_size // world,
    )
    if run.dist.distributed:  # every rank must take the same batch: the smallest choice
        agreed = torch.tensor([chosen], device=run.device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        chosen = int(agreed.item())
    print0(
        "auto_batch: tried "
        + ", ".join(f"{b} {'fits' if ok else 'out of memory'}" for b, ok in tried)
        + f"; using {chosen} per process"
    )
    return chosen * world


def _batch_fits(run: _Run, cfg) -> bool:
    """Whether two real training steps at `cfg`'s batch fit in device memory; everything built
    for them is local and freed before the next try."""
    try:
        seed_everything(cfg.seed)
        data = run.workload.build_data(cfg, run.device, run.dist)
        model = run.workload.build_model(cfg, data).to(run.device)
        optimizer = run.workload.build_optimizer(cfg, model, capturable=False)
        scaler = run.precision.grad_scaler(run.device)
        loss_sum = torch.zeros((), device=run.device)
        step = _make_step(run, model, data, optimizer, scaler, loss_sum, autocast_cache=True)
        batches = data.train.epoch(0)
        for _ in range(2):
            step(next(batches))
        synchronize(run.device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        data = model = batches = step = optimizer = scaler = loss_sum = None
        torch.cuda.empty_cache()


def _use_cuda_graph(run: _Run) -> bool:
    wanted = run.options.cuda_graph
    possible = (
        run.device.type == "cuda"
        and run.workload.graph_safe
        and not run.dist.distributed
        and not run.precision.uses_grad_scaler
    )
    if wanted and not possible:
        raise GpulabError(
            "--cuda-graph needs a single-process CUDA run of a static-shape workload "
            "without fp16; drop --cuda-graph"
        )
    return possible if wanted is None else wanted


def _restore(run: _Run, model, optimizer, scaler, use_graph: bool) -> tuple[Position, tuple]:
    """Load a resumed run's state; return where the loop starts and the history so far."""
    if run.checkpoint is None:
        return Position(epoch=0, step=0, global_step=0), ()
    ck = run.checkpoint
    load_weights(model, ck["model"], run.resume_dir)
    optimizer.load_state_dict(ck["optimizer"])
    for group in optimizer.param_groups:
        if "capturable" in group:  # the saved flag belongs to the device that saved it
            group["capturable"] = use_graph
    if ck["scaler"]:  # empty where the saving run had no scaler (not fp16)
        scaler.load_state_dict(ck["scaler"])
    restore_rng_state(ck["rng"])
    at = ck["position"]
    return Position(epoch=at["epoch"], step=at["step"], global_step=at["global_step"]), tuple(
        at["history"]
    )


def _wrap(run: _Run, model: nn.Module, compile_: bool) -> nn.Module:
    """DDP under torchrun, then torch.compile when asked: never inside the model code."""
    wrapped = model
    if run.dist.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [run.device.index] if run.device.type == "cuda" else None
        if run.device.type == "cuda":  # BatchNorm statistics over the global batch
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = DDP(model, device_ids=ids)
    if compile_:
        wrapped = torch.compile(wrapped)
    return wrapped


def _make_step(run: _Run, train_model, data, optimizer, scaler, loss_sum, autocast_cache: bool):
    workload, precision, device = run.workload, run.precision, run.device

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device, cache=autocast_cache):
            loss = workload.loss(train_model, batch, data)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum.add_(loss.detach())

    return step


def _create_run_dir(run: _Run) -> Path | None:
    """The run folder (a resumed run's own), with a writable TensorBoard folder in it."""
    if not run.dist.is_main:
        return None
    run_dir = run.resume_dir or records.new_run_dir(
        run.options.out, run.workload.name, str(run.device)
    )
    try:
        tensorboard.writable_folder(run_dir / tensorboard.FOLDER)
    except GpulabError:
        if run.resume_dir is None:
            records.discard_run_dir(run_dir)
        raise
    marker = records.torchrun_marker(run.options.out, run.workload.name)
    if marker is not None and run.resume_dir is None:  # restarted workers find this run by it
        atomic_write_text(marker, f"{run_dir}\n")
    return run_dir


# -- the loop ----------------------------------------------------------------------------------


class _Evaluation(NamedTuple):
    global_step: int
    mark: int  # the StepMeter mark at its end
    metrics: dict  # device tensors until the loop ends


@dataclass(frozen=True)
class _LoopResult:
    position: Position
    history: tuple[dict, ...]  # every evaluation of the run, earlier segments' included
    timing: StepTiming  # this segment's
    eval_points: tuple[tuple[int, float], ...]  # this segment's: (global step, s from its start)
    reached_quality: bool
    energy: records.Energy  # this segment's timed steps


class _Loop:
    """The steps of one segment: epochs from `setup.start` until the last epoch, `--max-steps` or
    the quality target. Periodic evaluations and epoch checkpoints are meter pauses."""

    def __init__(self, run: _Run, setup: _Setup, run_dir: Path | None):
        self.run, self.s, self.run_dir = run, setup, run_dir
        total_steps = setup.cfg.epochs * setup.data.train.steps_per_epoch
        most = run.options.max_steps
        self.stop_at = total_steps if most is None else min(total_steps, most)
        # a loader's workers fill their read-ahead while the model is set up: the steps that
        # take those batches wait for nothing, so they are warm-up too
        self.warmup = max(setup.cfg.warmup_steps, setup.data.train.ready_ahead)
        # energy is measured over the steps the timing counts: all but the warm-up, at least one
        planned = self.stop_at - setup.start.global_step
        energy = EnergyMeter.for_device(run.device, measure_cpu=run.dist.local_rank == 0)
        self.meter = StepMeter(
            run.device, energy=energy, energy_after_steps=min(self.warmup, max(planned - 1, 0))
        )
        self.epoch, self.step, self.global_step = (
            setup.start.epoch,
            setup.start.step,
            setup.start.global_step,
        )
        self.window = 0  # steps since the last evaluation: its train_loss averages them
        self.evals: list[_Evaluation] = []
        quality = run.options.stop_at_quality
        self.target = run.workload.quality_target(setup.cfg) if quality else None
        self.reached = False
        shown = run.dist.is_main and not run.options.quiet
        self.progress = ProgressBar("train epoch 1", total_steps, enabled=shown)

    @property
    def position(self) -> Position:
        return Position(epoch=self.epoch, step=self.step, global_step=self.global_step)

    def run_steps(self) -> _LoopResult:
        s = self.s
        s.loss_sum.zero_()  # in place: a captured graph holds this tensor
        s.train_model.train()
        with self.progress:
            self.progress.update(self.global_step)  # a resumed run starts where it stopped
            try:
                while self.epoch < s.cfg.epochs and self.global_step < self.stop_at:
                    if not self._epoch():
                        break
            finally:
                self.meter.steps_end()
        if self.window or not self.evals:
            self._evaluate()
            if self.target is not None and not self.reached:  # the last one may reach it too
                self.reached = self._reached(self.evals[-1].metrics)
        return self._result()

    def _epoch(self) -> bool:
        """The rest of the current epoch; False when the run stops inside it."""
        train = self.s.data.train
        batches = train.epoch(self.epoch, self.step, out=getattr(self.s.step_fn, "static", None))
        for _ in range(self.step, train.steps_per_epoch):
            if self.global_step >= self.stop_at:
                return False
            self._take_step(batches)
            if self.reached:
                return False
        self.epoch, self.step = self.epoch + 1, 0
        every = self.run.options.checkpoint_every_epochs
        if every and self.epoch % every == 0 and self.epoch < self.s.cfg.epochs:
            with self.meter.pause():
                history = [*self.s.history, *_materialize(self.evals)]
                _save(self.run, self.s, self.run_dir, self.position, history)
        return True

    def _take_step(self, batches) -> None:
        with self.meter.data_wait():
            batch = next(batches)
        self.s.step_fn(batch)
        self.meter.step_done()
        self.step += 1
        self.global_step += 1
        self.window += 1
        for hook in self.run.on_step:
            hook(self.global_step)
        every = self.s.cfg.eval_every
        if every and self.global_step % every == 0:
            self._evaluate_during_training()
        self.progress.update(self.global_step, label=f"train epoch {self.epoch + 1}")

    def _evaluate_during_training(self) -> None:
        metrics = self._evaluate()
        self.window = 0
        self.s.train_model.train()
        if self.run.device.type == "cpu":  # reading a CUDA tensor would sync
            self.progress.update(self.global_step, metrics=metrics)
        if self.target is not None:  # a time-to-quality run reads its metric: a sync
            with self.meter.pause():  # a pause too, and its end is when the run knows the answer
                self.reached = self._reached(metrics)
                self.s.train_model.train()
            self.evals[-1] = _Evaluation(self.global_step, self.meter.latest, metrics)

    def _evaluate(self) -> dict:
        """Metrics as device tensors, timed as a pause: nothing is read back here."""
        s, run = self.s, self.run
        with self.meter.pause():
            s.model.eval()
            with torch.no_grad(), run.precision.autocast(run.device):
                metrics = dict(run.workload.evaluate(s.model, s.data))
            if self.window:
                metrics["train_loss"] = s.loss_sum / self.window
                s.loss_sum.zero_()
        self.evals.append(_Evaluation(self.global_step, self.meter.latest, metrics))
        return metrics

    def _reached(self, metrics: dict) -> bool:
        """Whether an evaluation meets the target; the workload adds metrics too costly for
        every run (e.g. BLEU) only here."""
        if self.target.metric not in metrics:
            self.s.model.eval()
            with torch.no_grad():
                metrics.update(self.run.workload.quality_eval(self.s.model, self.s.data))
        return self.target.reached(float(metrics[self.target.metric]))

    def _result(self) -> _LoopResult:
        train = self.s.data.train
        timing = self.meter.result(train.batch_size, self.warmup)
        seconds = [timing.since_start_s(e.mark) for e in self.evals]
        rows = [
            {**row, "time_s": self.s.setup_s + t}
            for row, t in zip(_materialize(self.evals), seconds)
        ]
        points = tuple((e.global_step, t) for e, t in zip(self.evals, seconds))
        history = (*self.s.history, *rows)
        return _LoopResult(
            self.position, history, timing, points, self.reached, self._energy(timing)
        )

    def _energy(self, timing: StepTiming) -> records.Energy:
        """The timed steps' energy; under torchrun, all processes' together (a collective)."""
        meter, dist = self.meter.energy, self.run.dist
        readings = summed_over_processes(meter, dist.local_rank) if dist.distributed else None
        return energy_of(readings or meter.readings(), timing.stats.samples)


def _save(run: _Run, s: _Setup, run_dir: Path | None, position: Position, history) -> None:
    if not run.dist.is_main:
        return
    save_checkpoint(
        run_dir / records.CHECKPOINT,
        {
            "workload": run.workload.name,
            "config": config_to_dict(s.cfg),
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scaler": s.scaler.state_dict(),
            "precision": run.precision.name,
            "rng": rng_state(),
            "position": {**asdict(position), "history": list(history)},
            "extra": run.workload.extra_state(s.data),
            "command": run.options.command,
        },
    )


# -- the finish --------------------------------------------------------------------------------


def _finish(
    run: _Run, s: _Setup, loop: _LoopResult, run_dir: Path | None
) -> records.RunRecord | None:
    """Final checkpoint, the workload's final metrics and plots, the run record, then its
    TensorBoard events and MLflow run (rank 0)."""
    if not run.dist.is_main:
        return None
    _save(run, s, run_dir, loop.position, loop.history)
    metrics = run.workload.finish(s.model, s.data, run_dir, list(loop.history))
    # each device computes its share: MFU is one device's rate against one device's peak
    per_device = loop.timing.stats.samples_per_s / run.dist.world_size
    flops = run.workload.flops(s.cfg, s.model, s.data)
    efficiency = _efficiency(flops, per_device, run, s.measured_peaks) if flops else None
    record = _record(run, s, loop, metrics, efficiency, run_dir)
    records.write_record(run_dir, record)
    # from the record, after it is written: a failure below loses no part of the run
    segment = loop.history[len(s.history) :]
    lr = float(s.optimizer.param_groups[0]["lr"])
    tensorboard.write_run(run_dir / tensorboard.FOLDER, record, segment, learning_rate=lr)
    if run.options.mlflow:
        from gpulab.runtime.mlflow import log_run

        log_run(run.options.mlflow, record, run_dir)
    return record


def _status(cfg, loop: _LoopResult) -> str:
    if loop.reached_quality:
        return "reached quality"
    return "complete" if loop.position.epoch >= cfg.epochs else "stopped"


def _record(
    run: _Run, s: _Setup, loop: _LoopResult, metrics, efficiency, run_dir: Path
) -> records.RunRecord:
    """The run record, every field in one place."""
    stats = loop.timing.stats
    key = metrics.get(run.workload.key_metric, getattr(stats, run.workload.key_metric, None))
    quality = _time_to_quality(run.workload.quality_target(s.cfg), s.setup_s, loop)
    return records.RunRecord(
        workload=run.workload.name,
        status=_status(s.cfg, loop),
        created_utc=s.started_utc,
        command=run.options.command,
        config=config_to_dict(s.cfg),
        options=records.Options(
            device=str(run.device),
            precision=run.precision.name,
            compile=s.compile,
            cuda_graph=s.use_graph,
            world_size=run.dist.world_size,
            backend=run.dist.backend,
            max_steps=run.options.max_steps,
            # the timing covers this segment only when a run was resumed
            resumed_from_step=s.start.global_step if run.checkpoint else None,
        ),
        environment=records.Environment(**describe_environment(run.device)),
        pretrained=run.workload.pretrained(s.data),
        position=loop.position,
        timing=_timing(run, s, loop),
        memory=records.Memory(**_memory(run.device)),
        efficiency=records.Efficiency(**efficiency) if efficiency else None,
        energy=loop.energy,
        metrics=metrics,
        key_metric=records.KeyMetric(
            name=run.workload.key_metric, value=key, higher_is_better=run.workload.higher_is_better
        ),
        verdict=run.workload.verdict(metrics) if metrics else None,
        quality=records.Quality(**quality) if quality else None,
        history=list(loop.history),
        artifacts=sorted(p.name for p in run_dir.iterdir() if p.name != records.RECORD),
    )


def _timing(run: _Run, s: _Setup, loop: _LoopResult) -> records.Timing:
    """The record's timing: the meter's figures, warm-up, evaluations and checkpoints excluded."""
    t, stats, world = loop.timing, loop.timing.stats, run.dist.world_size
    batch = s.data.train.batch_size
    return records.Timing(
        setup_s=s.setup_s,
        train_s=t.train_s,
        eval_and_checkpoint_s=t.paused_s,
        data_wait_s=t.data_wait_s,
        data_wait_fraction=t.data_wait_s / t.train_s if t.train_s else 0.0,
        warmup_steps_excluded=t.warmup_steps,
        timed_steps=stats.steps,
        samples_per_s=stats.samples_per_s,
        samples_per_s_per_rank=stats.samples_per_s / world,
        global_batch=batch,
        per_rank_batch=batch // world,
        step_median_s=stats.step_median_s,
        step_iqr_s=stats.step_iqr_s,
        step_p10_s=stats.step_p10_s,
        step_p90_s=stats.step_p90_s,
        clock="cuda events" if run.device.type == "cuda" else "host perf_counter",
        step_s=_subsample(list(t.step_s), 1000),
    )


def _efficiency(flops: dict, samples_per_s: float, run: _Run, measured: dict | None) -> dict:
    """Model FLOPs per sample and MFU of one device (`samples_per_s` per rank): against the
    datasheet peak the caller passed and a probe's measured peak."""
    from gpulab.runtime.flops import utilisation

    peak = run.options.datasheet_peak
    return {
        "forward_flops_per_sample": flops["forward"],
        **utilisation(
            flops["train"],
            samples_per_s,
            run.precision.name,
            peak.tflops if peak else None,
            measured,
        ),
        "peak_source": peak.source if peak else "peak unknown",
        "probe": str(run.options.probe) if run.options.probe else None,
    }


def _time_to_quality(target, setup_s: float, loop: _LoopResult) -> dict | None:
    """The first evaluation of this segment on target, timed from the run's start."""
    if target is None or not any(target.metric in row for row in loop.history):
        return None  # this run never measured the metric
    reached = None
    rows = loop.history[len(loop.history) - len(loop.eval_points) :]
    for (step, t), row in zip(loop.eval_points, rows):
        value = row.get(target.metric)
        if value is not None and target.reached(value):
            reached = {"step": step, "time_to_quality_s": setup_s + t}
            break
    return {
        "metric": target.metric,
        "target": target.target,
        "higher_is_better": target.higher_is_better,
        "reached": reached is not None,
        **(reached or {}),
    }


def cpu_threads(option: int | None, workload: Workload) -> int:
    """--threads as given, else the default capped at the workload's max_cpu_threads."""
    return option or default_cpu_threads(workload.max_cpu_threads)


def compile_setting(option: bool | str | None, workload: Workload, device: torch.device):
    """--compile as given (True, False, "auto"); unset: "auto" on CUDA for workloads whose step
    was measured faster compiled, else False."""
    if option is not None:
        return option
    return "auto" if workload.compile_on_gpu and device.type == "cuda" else False


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can."""
    import shutil

    if not torch._dynamo.is_dynamo_supported():
        return (
            f"TorchDynamo does not support Python {sys.version_info.major}.{sys.version_info.minor}"
        )
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH"
    return None


def _subsample(values: list[float], most: int) -> list[float]:
    """At most `most` values, evenly spaced over the list (all of them when there are fewer)."""
    if len(values) <= most:
        return list(values)
    return [values[round(i * (len(values) - 1) / (most - 1))] for i in range(most)]


def _materialize(evals: list) -> list[dict]:
    """Read the evaluation tensors back as floats (after the run, not during it)."""
    return [{"step": gs, **{k: float(v) for k, v in metrics.items()}} for gs, _, metrics in evals]


def _memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
            "kind": "cuda",
        }
    import resource

    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "kind": "host",
    }


class _GraphedStep:
    """The whole training step (forward, backward, optimizer) captured once, replayed per batch.

    Capture needs a few warm-up steps; the model and optimizer state are restored afterwards,
    so the graphed run takes exactly the steps an eager run would.
    """

    def __init__(self, step_fn, batches, model: nn.Module, optimizer: torch.optim.Optimizer):
        example = next(batches.epoch(0))
        self.static = tuple(t.clone() for t in example)
        saved = _snapshot(model, optimizer)
        for _ in range(3):
            on_side_stream(step_fn, self.static)
        optimizer.zero_grad(set_to_none=True)
        self.graph, _ = capture_graph(step_fn, self.static)
        _restore_in_place(model, optimizer, saved)

    def __call__(self, batch) -> None:
        for static, fresh in zip(self.static, batch):
            if fresh is not static:  # batch sources write straight into `static` when they can
                static.copy_(fresh, non_blocking=True)
        self.graph.replay()


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer):
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {
        id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
        for p, s in optimizer.state.items()
    }
    return params, state


@torch.no_grad()
def _restore_in_place(model: nn.Module, optimizer: torch.optim.Optimizer, saved) -> None:
    """Put back the state captured by `_snapshot` without moving any tensor (the graph holds them)."""
    params, state = saved
    for k, v in model.state_dict().items():
        v.copy_(params[k])
    for p, s in optimizer.state.items():
        before = state.get(id(p), {})
        for k, v in s.items():
            if torch.is_tensor(v):
                v.copy_(before[k]) if k in before else v.zero_()
