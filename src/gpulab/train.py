"""The one training loop every workload uses.

The workload supplies data, a model, an optimizer, a loss and metrics; this module owns the
rest, applied from outside the model in one fixed order: placement, precision, DDP,
torch.compile, CUDA graph. It times steps without synchronizing on the hot path, evaluates
periodically without reading results back, writes atomic checkpoints and a run record, and
resumes a stopped run exactly where it stopped.
"""

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from gpulab.runtime import records
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
    init_distributed,
    local_device,
    print0,
    seed_everything,
)
from gpulab.runtime.environment import describe_device, describe_environment
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_text, ensure_writable_dir
from gpulab.runtime.precision import Precision, resolve_precision
from gpulab.runtime.progress import ProgressBar
from gpulab.runtime.timing import Timeline, summarize_steps
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
    stop_at_quality: bool = False  # time-to-quality runs: stop at the first evaluation on target
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
    set_cpu_threads(cpu_threads(options.threads, workload))
    device = local_device(resolve_device(options.device))
    name = options.precision
    checkpoint = None
    resume = resume if resume is not None else _torchrun_restart_dir(options.out, workload.name)
    if resume is not None:
        checkpoint = _load_resume(Path(resume), workload)
        cfg = config_from_dict(workload.config_cls, checkpoint["config"])
        saved = checkpoint.get("precision")  # runs saved before it was kept: the option's
        if saved and name not in ("auto", saved):
            raise GpulabError(
                f"--resume continues a {saved} run (its optimizer and scaler state are {saved}'s); "
                f"drop --precision {name}"
            )
        name = saved or name
    precision = resolve_precision(
        workload.default_precision(device) if name == "auto" else name, device
    )
    cfg = cfg if cfg is not None else workload.config()
    cfg.validate()
    dist = init_distributed(device)
    try:
        return _Run(workload, cfg, options, device, precision, dist, checkpoint, resume).run()
    except torch.OutOfMemoryError:
        raise GpulabError(
            f"out of {device.type.upper()} memory at batch size {cfg.batch_size}; pass a smaller "
            "--batch" + (" or --batch auto" if hasattr(cfg, "auto_batch") else "")
        ) from None
    finally:
        cleanup_distributed()


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
    """After torchrun restarts its workers (--max-restarts), the run folder of this job, when it
    holds a checkpoint: every rank then resumes from it."""
    marker = records.torchrun_marker(out, workload)
    if marker is None or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    if not marker.is_file():
        return None
    run_dir = Path(marker.read_text().strip())
    return run_dir if (run_dir / records.CHECKPOINT).is_file() else None


class _Run:
    """One training run; `run()` reads top to bottom."""

    def __init__(self, workload, cfg, options, device, precision, dist, checkpoint, resume_dir):
        self.workload: Workload = workload
        self.cfg = cfg
        self.options: TrainOptions = options
        self.device: torch.device = device
        self.precision: Precision = precision
        self.dist: DistInfo = dist
        self.checkpoint = checkpoint
        self.resume_dir = Path(resume_dir) if resume_dir else None

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        started = time.perf_counter()  # time-to-quality starts before any data is touched
        self.started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.dist.is_main and self.resume_dir is None:
            ensure_writable_dir(self.options.out)
        self.compile = self._compile_wanted()
        self.device_name = describe_device(self.device)["name"]  # the peak tables' key
        self.measured_peaks = self._measured_peaks()
        if self.workload.graph_safe:  # static shapes; before the batch search, whose steps
            pick_fastest_kernels(self.device)  # must use the kernels (and workspace) of the run
        if getattr(self.cfg, "auto_batch", False) and self.checkpoint is None:
            self.cfg = self._auto_batch()
        seed_everything(self.cfg.seed)
        data = self.workload.build_data(self.cfg, self.device, self.dist)
        model = self.workload.build_model(self.cfg, data).to(self.device)
        self.use_graph = self._use_cuda_graph()
        self.optimizer = self.workload.build_optimizer(self.cfg, model, capturable=self.use_graph)
        self.scaler = self.precision.grad_scaler(self.device)
        position = self._restore(model)
        train_model = self._wrap(model)
        self.loss_sum = torch.zeros((), device=self.device)  # summed by every step, on the device
        step_fn = self._make_step(train_model, data, autocast_cache=not self.use_graph)
        if self.use_graph:
            step_fn = _GraphedStep(step_fn, data.train, model, self.optimizer)
        synchronize(self.device)
        setup_s = self.setup_s = time.perf_counter() - started

        self.run_dir = self._create_run_dir()
        if self.dist.distributed:
            print0(
                f"{self.dist.world_size} processes ({self.dist.backend}): the global batch of "
                f"{data.train.batch_size} is kept constant, {data.train.batch_size // self.dist.world_size} "
                "samples per process"
            )
        try:
            loop = self._loop(model, train_model, step_fn, data, position)
        except BaseException:
            if self.resume_dir is None:
                records.discard_run_dir(self.run_dir)
            raise
        loop["setup_s"] = setup_s
        position = loop.pop("position")
        status = "complete" if position["epoch"] >= self.cfg.epochs else "stopped"
        if loop["reached_quality"]:
            status = "reached quality"
        return TrainResult(self.run_dir, self._finish(model, data, loop, position, status))

    def _measured_peaks(self) -> dict | None:
        """Read before any work, so that a wrong --probe file costs nothing."""
        if self.options.probe is None:
            return None
        from gpulab.runtime.flops import measured_peaks

        return measured_peaks(self.options.probe, self.device_name)

    def _compile_wanted(self) -> bool:
        wanted = compile_setting(self.options.compile, self.workload, self.device)
        if not wanted:
            return False
        problem = compile_unavailable(self.device)
        if problem and wanted == "auto":
            print0(f"gpulab: torch.compile is not available here ({problem}); running eager")
            return False
        if problem:
            raise GpulabError(
                f"torch.compile is not available here ({problem}); drop --compile or pass "
                "--compile=auto to run without it where it is unavailable"
            )
        if not self.options.quiet:
            print0("gpulab: torch.compile on: the first steps compile the model (up to a minute)")
        return True

    def _auto_batch(self):
        """The largest global batch whose real training step fits in device memory."""
        from dataclasses import replace

        from gpulab.runtime.memory import search_batch

        if self.device.type != "cuda":
            print0(
                f"--batch auto searches GPU memory; on {self.device.type} the batch stays "
                f"{self.cfg.batch_size}"
            )
            return replace(self.cfg, auto_batch=False)

        def fits(batch: int) -> bool:
            cfg = replace(self.cfg, batch_size=batch * self.dist.world_size)
            try:
                seed_everything(cfg.seed)
                data = self.workload.build_data(cfg, self.device, self.dist)
                model = self.workload.build_model(cfg, data).to(self.device)
                self.optimizer = self.workload.build_optimizer(cfg, model, capturable=False)
                self.scaler = self.precision.grad_scaler(self.device)
                self.loss_sum = torch.zeros((), device=self.device)
                step = self._make_step(model, data, autocast_cache=True)
                batches = data.train.epoch(0)
                for _ in range(2):
                    step(next(batches))
                synchronize(self.device)
                return True
            except torch.OutOfMemoryError:
                return False
            finally:
                data = model = batches = step = self.optimizer = None
                torch.cuda.empty_cache()

        chosen, tried = search_batch(fits, start=self.cfg.batch_size // self.dist.world_size)
        if self.dist.distributed:  # every rank must take the same batch: the smallest choice
            agreed = torch.tensor([chosen], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            chosen = int(agreed.item())
        print0(
            "--batch auto: tried "
            + ", ".join(f"{b} {'fits' if ok else 'out of memory'}" for b, ok in tried)
            + f"; using {chosen} per process"
        )
        return replace(self.cfg, batch_size=chosen * self.dist.world_size, auto_batch=False)

    def _use_cuda_graph(self) -> bool:
        wanted = self.options.cuda_graph
        possible = (
            self.device.type == "cuda"
            and self.workload.graph_safe
            and not self.dist.distributed
            and not self.precision.uses_grad_scaler
        )
        if wanted and not possible:
            raise GpulabError(
                "--cuda-graph needs a single-process CUDA run of a static-shape workload "
                "without fp16; drop --cuda-graph"
            )
        return possible if wanted is None else wanted

    def _restore(self, model) -> dict:
        """Load a resumed run's state; return where the loop starts."""
        if self.checkpoint is None:
            return {"epoch": 0, "step": 0, "global_step": 0, "history": []}
        ck = self.checkpoint
        load_weights(model, ck["model"], self.resume_dir)
        self.optimizer.load_state_dict(ck["optimizer"])
        for group in self.optimizer.param_groups:
            if "capturable" in group:  # the saved flag belongs to the device that saved it
                group["capturable"] = self.use_graph
        if ck["scaler"]:  # empty where the saving run had no scaler (not fp16)
            self.scaler.load_state_dict(ck["scaler"])
        restore_rng_state(ck["rng"])
        return dict(ck["position"])

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP under torchrun, then torch.compile when asked: never inside the model code."""
        wrapped = model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            if self.device.type == "cuda":  # BatchNorm statistics over the global batch
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            wrapped = DDP(model, device_ids=ids)
        if self.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _make_step(self, train_model, data, autocast_cache: bool):
        workload, precision, device = self.workload, self.precision, self.device
        optimizer, scaler, loss_sum = self.optimizer, self.scaler, self.loss_sum

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(device, cache=autocast_cache):
                loss = workload.loss(train_model, batch, data)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum.add_(loss.detach())

        return step

    def _create_run_dir(self) -> Path | None:
        if not self.dist.is_main:
            return None
        if self.resume_dir is not None:
            return self.resume_dir
        run_dir = records.new_run_dir(self.options.out, self.workload.name, str(self.device))
        marker = records.torchrun_marker(self.options.out, self.workload.name)
        if marker is not None:  # restarted workers find this run through the marker
            atomic_write_text(marker, f"{run_dir}\n")
        return run_dir

    def _loop(self, model, train_model, step_fn, data, position) -> dict:
        """Epochs of steps; returns timings, history and the position reached."""
        cfg, opts = self.cfg, self.options
        steps_per_epoch = data.train.steps_per_epoch
        total_steps = cfg.epochs * steps_per_epoch
        stop_at = total_steps if opts.max_steps is None else min(total_steps, opts.max_steps)
        epoch, start, global_step = position["epoch"], position["step"], position["global_step"]
        history = list(position["history"])
        timeline = Timeline(self.device)
        loop_start = last = timeline.mark()
        steps: list[tuple[int, int]] = []  # (start mark, end mark) of each step
        pauses: list[tuple[int, int]] = []  # evaluations and checkpoints inside the loop
        evals: list[tuple[int, int, dict]] = []  # (global step, timeline mark, metrics)
        data_wait_s = 0.0
        self.loss_sum.zero_()  # in place: a captured graph holds this tensor
        fail_at = _injected_failure_step(self.dist)
        target = self.workload.quality_target(cfg) if opts.stop_at_quality else None
        reached = False
        window = 0
        progress = ProgressBar(
            "train epoch 1", total_steps, enabled=self.dist.is_main and not opts.quiet
        )
        train_model.train()
        with progress:
            progress.update(global_step)  # a resumed run starts where it stopped
            while epoch < cfg.epochs and global_step < stop_at:
                batches = data.train.epoch(epoch, start, out=getattr(step_fn, "static", None))
                for step in range(start, steps_per_epoch):
                    if global_step >= stop_at:
                        break
                    t0 = time.perf_counter()
                    batch = next(batches)
                    data_wait_s += time.perf_counter() - t0
                    step_fn(batch)
                    if global_step == fail_at:
                        os._exit(1)  # GPULAB_FAIL_AT_STEP: a worker dies, as a killed one would
                    end = timeline.mark()  # one mark a step: it starts where the last one ended
                    steps.append((last, end))
                    last = end
                    window += 1
                    global_step += 1
                    position = {"epoch": epoch, "step": step + 1, "global_step": global_step}
                    if cfg.eval_every and global_step % cfg.eval_every == 0:
                        evals.append(self._evaluate(model, data, timeline, global_step, window))
                        pauses.append((last, evals[-1][1]))
                        last, window = evals[-1][1], 0
                        train_model.train()
                        if self.device.type == "cpu":  # reading a CUDA tensor would sync
                            progress.update(global_step, metrics=evals[-1][2])
                        if target is not None:  # a time-to-quality run reads its metric: a sync
                            reached = self._reached(target, model, data, evals[-1][2])
                            train_model.train()
                            mark = timeline.mark()  # the quality check is a pause, and its end
                            pauses.append((last, mark))  # is when the run knows the answer
                            last, evals[-1] = mark, (global_step, mark, evals[-1][2])
                    progress.update(global_step, label=f"train epoch {epoch + 1}")
                    if reached:
                        break
                else:
                    epoch, start = epoch + 1, 0
                    position = {"epoch": epoch, "step": 0, "global_step": global_step}
                    every = opts.checkpoint_every_epochs
                    if every and epoch % every == 0 and epoch < cfg.epochs:
                        self._save(model, data, position, history + _materialize(evals))
                        pauses.append((last, timeline.mark()))
                        last = pauses[-1][1]
                    continue
                break
        if window or not evals:
            evals.append(self._evaluate(model, data, timeline, global_step, window))
            if target is not None and not reached:  # the last evaluation may reach it too
                reached = self._reached(target, model, data, evals[-1][2])
        seconds = timeline.seconds()
        step_s = [seconds[b] - seconds[a] for a, b in steps]
        times = [self.setup_s + seconds[mark] - seconds[loop_start] for _, mark, _ in evals]
        history += [{**row, "time_s": t} for row, t in zip(_materialize(evals), times)]
        # a loader's workers fill their read-ahead while the model is set up: the steps that
        # take those batches wait for nothing, so they are warm-up too
        warm = min(max(cfg.warmup_steps, data.train.ready_ahead), max(len(step_s) - 1, 0))
        train_end = steps[-1][1] if steps else loop_start
        paused_s = sum(seconds[b] - seconds[a] for a, b in pauses if b <= train_end)
        eval_points = [(gs, seconds[mark] - seconds[loop_start]) for gs, mark, _ in evals]
        return {
            "position": {**position, "history": history},
            "history": history,
            "stats": summarize_steps(step_s[warm:], data.train.batch_size),
            # wall time of the steps, gaps between them included, evaluations and checkpoints not
            "train_s": seconds[train_end] - seconds[loop_start] - paused_s,
            "paused_s": paused_s,
            "data_wait_s": data_wait_s,
            "warmup_steps": warm,
            "eval_points": eval_points,
            "step_s": _subsample(step_s[warm:], 1000),
            "reached_quality": reached,
        }

    def _evaluate(self, model, data, timeline, global_step, window):
        """Metrics as device tensors plus a timeline mark: nothing is read back here."""
        model.eval()
        with torch.no_grad(), self.precision.autocast(self.device):
            metrics = dict(self.workload.evaluate(model, data))
        if window:
            metrics["train_loss"] = self.loss_sum / window
            self.loss_sum.zero_()
        return global_step, timeline.mark(), metrics

    def _save(self, model, data, position: dict, history: list) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.run_dir / records.CHECKPOINT,
            {
                "workload": self.workload.name,
                "config": config_to_dict(self.cfg),
                "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "precision": self.precision.name,
                "rng": rng_state(),
                "position": {**position, "history": history},
                "extra": self.workload.extra_state(data),
                "command": self.options.command,
            },
        )

    def _finish(self, model, data, loop, position, status) -> records.RunRecord | None:
        """Final checkpoint, the workload's final metrics and plots, and the run record."""
        if not self.dist.is_main:
            return None
        run_dir = self.run_dir
        self._save(model, data, position, loop["history"])
        metrics = self.workload.finish(model, data, run_dir, loop["history"])
        verdict = self.workload.verdict(metrics) if metrics else None
        stats = loop["stats"]
        quality = self._time_to_quality(loop)
        # each device computes its share: MFU is one device's rate against one device's peak
        efficiency = self._efficiency(model, data, stats.samples_per_s / self.dist.world_size)
        key = metrics.get(self.workload.key_metric, getattr(stats, self.workload.key_metric, None))
        record = records.RunRecord(
            workload=self.workload.name,
            status=status,
            created_utc=self.started_utc,
            command=self.options.command,
            config=config_to_dict(self.cfg),
            options=records.Options(
                device=str(self.device),
                precision=self.precision.name,
                compile=self.compile,
                cuda_graph=self.use_graph,
                world_size=self.dist.world_size,
                backend=self.dist.backend,
                max_steps=self.options.max_steps,
                # timing below covers this segment only when a run was resumed
                resumed_from_step=self.checkpoint["position"]["global_step"]
                if self.checkpoint
                else None,
            ),
            environment=records.Environment(**describe_environment(self.device)),
            pretrained=self.workload.pretrained(data),
            position=records.Position(**{k: v for k, v in position.items() if k != "history"}),
            timing=records.Timing(
                setup_s=loop["setup_s"],
                train_s=loop["train_s"],
                eval_and_checkpoint_s=loop["paused_s"],
                data_wait_s=loop["data_wait_s"],
                data_wait_fraction=loop["data_wait_s"] / loop["train_s"]
                if loop["train_s"]
                else 0.0,
                warmup_steps_excluded=loop["warmup_steps"],
                timed_steps=stats.steps,
                samples_per_s=stats.samples_per_s,
                samples_per_s_per_rank=stats.samples_per_s / self.dist.world_size,
                global_batch=data.train.batch_size,
                per_rank_batch=data.train.batch_size // self.dist.world_size,
                step_median_s=stats.step_median_s,
                step_iqr_s=stats.step_iqr_s,
                step_p10_s=stats.step_p10_s,
                step_p90_s=stats.step_p90_s,
                clock="cuda events" if self.device.type == "cuda" else "host perf_counter",
                step_s=loop["step_s"],
            ),
            memory=records.Memory(**_memory(self.device)),
            efficiency=records.Efficiency(**efficiency) if efficiency else None,
            metrics=metrics,
            key_metric=records.KeyMetric(
                name=self.workload.key_metric,
                value=key,
                higher_is_better=self.workload.higher_is_better,
            ),
            verdict=verdict,
            quality=records.Quality(**quality) if quality else None,
            history=loop["history"],
            artifacts=sorted(p.name for p in run_dir.iterdir() if p.name != records.RECORD),
        )
        records.write_record(run_dir, record)
        return record

    def _efficiency(self, model, data, samples_per_s: float) -> dict | None:
        """Model FLOPs per sample and MFU of one device (`samples_per_s` per rank): against the
        datasheet and a probe's measured peak."""
        from gpulab.probe.peaks import lookup_peak
        from gpulab.runtime.flops import utilisation

        flops = self.workload.flops(self.cfg, model, data)
        if flops is None:
            return None
        peak = lookup_peak(self.device_name) if self.device.type == "cuda" else None
        measured = self.measured_peaks
        return {
            "forward_flops_per_sample": flops["forward"],
            **utilisation(
                flops["train"],
                samples_per_s,
                self.precision.name,
                peak.tflops if peak else None,
                measured,
            ),
            "peak_source": peak.source if peak else "peak unknown",
            "probe": str(self.options.probe) if self.options.probe else None,
        }

    def _reached(self, target, model, data, metrics: dict) -> bool:
        """Whether an evaluation meets the target; the workload adds metrics too costly for
        every run (e.g. BLEU) only here."""
        if target.metric not in metrics:
            model.eval()
            with torch.no_grad():
                metrics.update(self.workload.quality_eval(model, data))
        return target.reached(float(metrics[target.metric]))

    def _time_to_quality(self, loop) -> dict | None:
        target = self.workload.quality_target(self.cfg)
        if target is None or not any(target.metric in row for row in loop["history"]):
            return None  # this run never measured the metric
        reached = None
        points = loop["eval_points"]
        rows = loop["history"][len(loop["history"]) - len(points) :]
        for (gs, t), row in zip(points, rows):
            value = row.get(target.metric)
            if value is not None and target.reached(value):
                reached = {"step": gs, "time_to_quality_s": loop["setup_s"] + t}
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


def _injected_failure_step(dist: DistInfo) -> int | None:
    """GPULAB_FAIL_AT_STEP=N makes the last rank exit at global step N on torchrun's first
    attempt: a fault to watch torchrun restart the workers and gpulab resume them."""
    step = os.environ.get("GPULAB_FAIL_AT_STEP", "")
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if step.isdigit() and first_attempt and dist.rank == dist.world_size - 1:
        return int(step) - 1  # compared before the step counter moves on
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
