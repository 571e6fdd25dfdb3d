"""gpulab's command line: the only place that parses arguments.

Every subcommand is thin: it calls a plain library function. A GpulabError becomes a one-line
message on stderr and exit code 2, never a traceback.
"""

import json
import os
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

if typing.TYPE_CHECKING:
    from gpulab.runtime.records import Efficiency, RunRecord

app = typer.Typer(
    help="Run real deep-learning workloads on CPU and GPUs, measure them honestly, and show "
    "where the time goes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _everywhere(
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="never fetch anything (pretrained weights); also GPULAB_OFFLINE=1",
        ),
    ] = False,
) -> None:
    """Options of every command (before its name: gpulab --offline stylize ...)."""
    if offline:
        os.environ["GPULAB_OFFLINE"] = "1"  # the children of bench and share inherit it


data_app = typer.Typer(help="Generate the embedded default data sets.", no_args_is_help=True)
predict_app = typer.Typer(help="Use a trained run's checkpoint.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(predict_app, name="predict")


class Compile(str, Enum):
    """`--compile`: torch.compile always, never, or where torch can."""

    auto = "auto"
    on = "on"
    off = "off"


COMPILE_SETTING = {Compile.auto: "auto", Compile.on: True, Compile.off: False}  # TrainOptions'


def _at_least(low: int):
    """A typer callback: one message for every count option, `--NAME must be at least LOW`."""

    def check(param: typer.CallbackParam, value: int | None) -> int | None:
        from gpulab.runtime import GpulabError

        if value is not None and value < low:
            name = param.opts[0] if param.opts else param.name
            raise GpulabError(f"{name} must be {'at least 1' if low == 1 else f'{low} or more'}")
        return value

    return check


OutOpt = Annotated[Path, typer.Option("--out", help="runs root: records go to OUT/WORKLOAD/RUN")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help="CPU threads for torch (default: physical cores)", callback=_at_least(1)),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite an existing output")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="a workload setting KEY=VALUE (repeatable); see gpulab workloads W"),
]


# `gpulab train`'s run options: how to run, never what to train (that is --preset and --set)
PresetOpt = Annotated[str, typer.Option(help="default (the study's settings) or debug")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="fp32 (TF32 off), tf32, bf16, fp16, or auto: the workload's choice "
        "(cnn: bf16 on a GPU; others fp32)"
    ),
]
CompileOpt = Annotated[
    Compile | None,
    typer.Option(help="torch.compile the model; auto: where torch can (default: cnn on CUDA)"),
]
CudaGraphOpt = Annotated[
    bool | None,
    typer.Option("--cuda-graph/--no-cuda-graph", help="capture the step (default: when possible)"),
]
MaxStepsOpt = Annotated[
    int | None,
    typer.Option(
        help="stop after this many steps in all (continue later with --resume)",
        callback=_at_least(1),
    ),
]
CheckpointEveryOpt = Annotated[
    int, typer.Option(help="epochs between checkpoints; 0: only at the end", callback=_at_least(0))
]
StopAtQualityOpt = Annotated[
    bool,
    typer.Option(
        "--stop-at-quality", help="stop at the workload's quality target (time-to-quality)"
    ),
]
ProbeJsonOpt = Annotated[
    Path | None, typer.Option(help="a `gpulab probe --json` file: MFU of its measured peak")
]
MlflowOpt = Annotated[
    str | None,
    typer.Option(
        "--mlflow",
        envvar="MLFLOW_TRACKING_URI",
        help="log the finished run to this MLflow tracking URI (http://HOST:PORT, file:PATH); "
        "needs pip install 'gpulab[mlflow]'",
    ),
]


@app.command()
def devices() -> None:
    """List every device gpulab can use, one line each."""
    from gpulab.runtime import list_devices

    for d in list_devices():
        print(f"{d.name:<8} {d.kind:<5} {d.memory_bytes / 2**30:7.1f} GiB  {d.model}")


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    from gpulab.runtime import GpulabError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise GpulabError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set epochs=3")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def settings_text(name: str, preset: str = "default") -> str:
    """A workload's settings as a table: key, default (of `preset`), unit, type and meaning."""
    from gpulab.workloads.base import field_docs
    from gpulab.workloads.registry import get_workload

    spec = get_workload(name)
    presets = spec.presets()
    spec.config(preset)  # an unknown preset: the one-line error listing the presets
    docs = field_docs(spec.config_cls, presets[preset])
    rows = [("key", "default", "unit", "type", "meaning")]
    rows += [(d.name, _value_text(d.default), d.unit, d.type, d.meaning) for d in docs]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows]
    head = f"{name} settings, --set KEY=VALUE (preset {preset}; presets: {', '.join(presets)}):"
    return "\n".join([head, *(line.rstrip() for line in lines)]) + "\n"


def _value_text(value) -> str:
    """A default written as `--set` takes it: none, true/false, comma-separated tuples."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


class _TrainCommand(TyperCommand):
    """`gpulab train WORKLOAD --help` ends with that workload's settings."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        from gpulab.workloads.registry import workload_names

        if "--help" in args:
            ctx.meta["workload"] = next((a for a in args if a in workload_names()), None)
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter) -> None:
        super().format_help(ctx, formatter)
        if ctx.meta.get("workload"):
            formatter.write("\n" + settings_text(ctx.meta["workload"]))
        else:
            formatter.write("\n  `gpulab train WORKLOAD --help` lists that workload's settings.\n")


@app.command()
def workloads(
    name: Annotated[str | None, typer.Argument(help="a workload: list its settings")] = None,
    preset: Annotated[str, typer.Option(help="show this preset's values")] = "default",
) -> None:
    """The workloads, or one workload's settings (--set KEY=VALUE) with defaults and units."""
    from gpulab.workloads.registry import get_workload, workload_names

    if name is not None:
        print(settings_text(name, preset), end="")
        return
    for n in workload_names():
        spec = get_workload(n)
        print(f"{n:<8} {spec.summary} (presets: {', '.join(spec.presets())})")


@app.command(cls=_TrainCommand)
def train(
    workload: Annotated[str, typer.Argument(help="workload name, e.g. stocks")],
    preset: PresetOpt = "default",
    set_: SetOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = None,
    cuda_graph: CudaGraphOpt = None,
    threads: ThreadsOpt = None,
    max_steps: MaxStepsOpt = None,
    checkpoint_every: CheckpointEveryOpt = 1,
    stop_at_quality: StopAtQualityOpt = False,
    probe: ProbeJsonOpt = None,
    mlflow: MlflowOpt = None,
    resume: Annotated[Path | None, typer.Option(help="continue a stopped run folder")] = None,
    out: OutOpt = Path("runs"),
    quiet: QuietOpt = False,
) -> None:
    """Train a workload; writes OUT/WORKLOAD/RUN/record.json, plots, a checkpoint and
    TensorBoard events (RUN/tb). Its
    settings are reached with --set KEY=VALUE: `gpulab train WORKLOAD --help` lists them."""
    from gpulab.probe.peaks import training_peak
    from gpulab.runtime import GpulabError, print0
    from gpulab.train import TrainOptions
    from gpulab.train import train as run_training
    from gpulab.workloads.registry import get_workload

    spec = get_workload(workload)
    overrides = _parse_sets(set_ or [])
    if resume is not None and (overrides or preset != "default"):
        raise GpulabError("--resume continues a run with its own settings; drop the other settings")
    cfg = None if resume is not None else spec.config(preset, overrides)
    options = TrainOptions(
        device=device,
        precision=precision,
        compile=None if compile is None else COMPILE_SETTING[compile],
        cuda_graph=cuda_graph,
        max_steps=max_steps,
        checkpoint_every_epochs=checkpoint_every,
        out=out,
        threads=threads,
        quiet=quiet,
        probe=probe,
        datasheet_peak=training_peak(device),
        stop_at_quality=stop_at_quality,
        mlflow=mlflow or None,
        command=["gpulab", *sys.argv[1:]],
    )
    result = run_training(workload, cfg, options, resume=resume)
    if result.run_dir is not None:
        _print_summary(result.record)
        print0(f"run: {result.run_dir}")


def _print_summary(record: "RunRecord") -> None:
    from rich.console import Console
    from rich.table import Table

    from gpulab.runtime.records import rate_text

    timing, opts = record.timing, record.options
    table = Table(title=f"{record.workload} on {record.device_name}", show_header=False)
    table.add_row("status", record.status)
    table.add_row("device / precision", f"{opts.device} / {opts.precision}")
    table.add_row("train time", f"{timing.train_s:.3f} s ({timing.timed_steps} timed steps)")
    table.add_row("throughput", f"{rate_text(timing.samples_per_s)} samples/s")
    table.add_row(
        "step time",
        f"median {timing.step_median_s * 1e3:.3f} ms, IQR {timing.step_iqr_s * 1e3:.3f} ms",
    )
    table.add_row("data wait", f"{100 * timing.data_wait_fraction:.1f} %")
    if record.memory is not None and record.memory.kind == "cuda":
        allocated = record.memory.peak_allocated_bytes
        table.add_row("peak memory", f"{allocated / 2**30:.2f} GiB allocated")
    for row in _efficiency_rows(record.efficiency):
        table.add_row(*row)
    if record.pretrained is not None:
        table.add_row("weights", "pretrained" if record.pretrained else "NOT pretrained (random)")
    quality = record.quality
    if quality:
        table.add_row(
            f"time to {quality.metric} {quality.target:g}",
            f"{quality.time_to_quality_s:.2f} s (step {quality.step})"
            if quality.reached
            else "not reached",
        )
    for key, value in record.metrics.items():
        if isinstance(value, (int, float, str)):
            table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    Console().print(table)
    if record.verdict:
        print(record.verdict)


def _efficiency_rows(eff: "Efficiency | None") -> list[tuple[str, str]]:
    """The summary's model-FLOPs and MFU rows, for workloads whose FLOPs are counted."""
    if eff is None:
        return []
    mfu = (
        f"{100 * eff.mfu:.1f} % of {eff.datasheet_peak_tflops:g} TFLOP/s datasheet {eff.peak_column}"
        if eff.mfu is not None
        else "peak unknown"
    )
    if eff.mfu_of_measured is not None:
        mfu += f"; {100 * eff.mfu_of_measured:.1f} % of {eff.measured_peak_tflops:.3g} measured"
    flops = (
        f"{eff.train_flops_per_sample / 1e9:.3g} GFLOP per sample per step, "
        f"{eff.achieved_tflops:.3g} TFLOP/s"
    )
    return [("model FLOPs", flops), ("MFU", mfu)]


@app.command()
def runs(out: OutOpt = Path("runs")) -> None:
    """List past runs under the runs root as a table."""
    from rich.console import Console
    from rich.table import Table

    from gpulab.runtime.records import list_runs, rate_text

    found = list_runs(out)
    if not found:
        print(f"no runs under {out}; start one with `gpulab train stocks`")
        return
    table = Table(title=f"runs under {out}")
    for col in (
        "created (UTC)",
        "workload",
        "device",
        "status",
        "samples/s",
        "key metric",
        "folder",
    ):
        table.add_column(col)
    for r in found:
        sps = rate_text(r.samples_per_s) if r.samples_per_s else ""
        table.add_row(
            r.created_utc, r.workload, r.device, r.status, sps, r.key_metric, str(r.run_dir)
        )
    Console(width=200).print(table)


@data_app.command("stocks")
def data_stocks(
    out: Annotated[Path, typer.Option("--out", help="CSV file to write")],
    rows: Annotated[int, typer.Option(help="minutes (rows)")] = 41_266,
    stocks: Annotated[int, typer.Option(help="constituent columns")] = 500,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
) -> None:
    """Write the generated market in the data_stocks.csv schema (DATE, SP500, constituents)."""
    from gpulab.workloads.stocks.data import generate_stocks, write_stocks_csv

    frame = generate_stocks(rows, stocks, seed)
    write_stocks_csv(frame, out)
    print(
        f"wrote {out}: {len(frame)} rows x {frame.shape[1]} columns (DATE, SP500, {stocks} stocks)"
    )


@data_app.command("images")
def data_images(
    out: Annotated[Path, typer.Option("--out", help="folder to write JPEGs into")],
    count: Annotated[int, typer.Option(help="number of images")] = 256,
    size: Annotated[
        str | None,
        typer.Option(
            help="crops: side in pixels (default 256); --classes: WxH (default: varied, like ImageNet)"
        ),
    ] = None,
    classes: Annotated[
        int | None,
        typer.Option(help="write an ImageFolder of this many classes of generated photos"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    workers: Annotated[
        int | None, typer.Option(help="--classes: processes (default: cores)")
    ] = None,
) -> None:
    """Content images for style training (random crops and flips of the bundled photos), or with
    --classes an ImageFolder of realistic JPEGs (~110 KB, varied sizes) to measure input pipelines."""
    from gpulab.data.images import save_image
    from gpulab.runtime import GpulabError
    from gpulab.runtime.files import ensure_writable_dir
    from gpulab.runtime.progress import ProgressBar
    from gpulab.workloads.style.data import bundled_crops

    if classes is not None:
        from gpulab.data.generate import write_image_folder

        wh = None
        if size is not None:
            parts = size.lower().split("x")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise GpulabError(f"--size {size}: pass WIDTHxHEIGHT, e.g. 500x375")
            wh = (int(parts[0]), int(parts[1]))
        with ProgressBar("images", count) as bar:
            r = write_image_folder(
                out, count, wh, classes, seed, workers, lambda done, _: bar.update(done)
            )
        print(
            f"wrote {r['images']} JPEGs in {r['classes']} classes to {out} "
            f"({r['bytes'] / 2**20:.1f} MB, {r['mean_kb']:.0f} kB mean)"
        )
        return
    side = 256 if size is None else (int(size) if size.isdigit() else -1)
    if count < 1 or not 16 <= side <= 1024:
        raise GpulabError("--count must be at least 1 and --size lie in 16..1024")
    ensure_writable_dir(out)
    for i, crop in enumerate(bundled_crops(count, side, seed)):
        save_image(crop, out / f"crop_{i:05d}.jpg")
    print(f"wrote {count} images of {side}x{side} to {out}")


@data_app.command("pack")
def data_pack(
    src: Annotated[Path, typer.Argument(help="an ImageFolder: SRC/CLASS/IMAGE.jpg")],
    dst: Annotated[Path, typer.Argument(help="new folder for the shards")],
    shard_mb: Annotated[float, typer.Option(help="target shard size, MB")] = 256,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="leave out unreadable images, counting them")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing DST")] = False,
) -> None:
    """Pack an image folder into WebDataset-compatible tar shards with an index and a manifest."""
    from gpulab.data import shards
    from gpulab.runtime import GpulabError
    from gpulab.runtime.progress import ProgressBar

    if shard_mb <= 0:
        raise GpulabError("--shard-mb must be greater than 0")
    classes, files, samples = shards.image_folder_samples(src, skip_bad)
    with ProgressBar("pack", len(files)) as bar:
        manifest = shards.pack(
            samples(), dst, "imagefolder", shard_mb, {"classes": classes}, force, bar.update
        )
    size = sum(s["bytes"] for s in manifest["shards"])
    skipped = samples.skipped[0]
    note = f" ({skipped} unreadable images left out)" if skipped else ""
    print(
        f"packed {manifest['samples']} imagefolder samples into {len(manifest['shards'])} shards "
        f"({size / 2**20:.1f} MB) in {dst}{note}"
    )


@data_app.command("verify")
def data_verify(dst: Annotated[Path, typer.Argument(help="a folder written by data pack")]) -> None:
    """Check a packed data set: sizes, checksums and every record against manifest and index."""
    from gpulab.data import shards
    from gpulab.runtime.progress import ProgressBar

    manifest = shards.read_manifest(dst)
    with ProgressBar("verify", len(manifest["shards"])) as bar:
        r = shards.verify(dst, bar.update)
    print(
        f"{dst}: {r['samples']} {r['kind']} samples in {r['shards']} shards ({r['bytes']:,} bytes): ok"
    )


@data_app.command("captions")
def data_captions(
    out: Annotated[Path, typer.Option("--out", help="folder for images/ and captions.json")],
    count: Annotated[int, typer.Option(help="number of scenes")] = 2000,
    size: Annotated[int, typer.Option(help="image side, pixels")] = 64,
    seed: Annotated[int, typer.Option(help="scene seed")] = 0,
) -> None:
    """Generated shapes scenes with five reference captions each, in COCO style."""
    from gpulab.runtime import GpulabError
    from gpulab.workloads.caption.data import generate_scenes, write_coco

    if count < 1 or not 16 <= size <= 1024:
        raise GpulabError("--count must be at least 1 and --size lie in 16..1024")
    path = write_coco(generate_scenes(count, size, seed), out)
    print(f"wrote {count} scenes to {out / 'images'} and their captions to {path}")


@predict_app.command("stocks")
def predict_stocks(
    run: Annotated[Path, typer.Option(help="a trained stocks run folder")],
    data: Annotated[Path, typer.Option(help="stocks CSV to predict")],
    output: Annotated[Path, typer.Option("--output", "-o", help="predictions CSV to write")],
    device: DeviceOpt = "auto",
) -> None:
    """Predict the next-minute index for every row of a CSV: writes DATE,actual,predicted."""
    from gpulab.workloads.stocks.workload import predict_stocks as predict

    result = predict(run, data, output, device)
    print(f"wrote {output}: {len(result)} predictions")


@predict_app.command("caption")
def predict_caption(
    images: Annotated[list[Path], typer.Argument(help="images to describe")],
    run: Annotated[Path, typer.Option(help="a trained caption run folder")],
    beam: Annotated[int, typer.Option(help="beam width (1: greedy)")] = 3,
    device: DeviceOpt = "auto",
) -> None:
    """Caption images with a trained model: one line each, with the caption's log-probability."""
    from gpulab.workloads.caption.workload import caption_images

    for row in caption_images(images, run, beam, device):
        print(f"{row['image']}: {row['caption']}  (log p = {row['logprob']:.3f})")


@predict_app.command("style")
def predict_style(
    content: Annotated[Path, typer.Argument(help="an image, or a folder of images")],
    run: Annotated[Path, typer.Option(help="a trained style run folder")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="image to write (a folder for a folder)")
    ],
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Apply a trained style network to an image or to every image of a folder."""
    from gpulab.workloads.style.workload import apply_style_model

    count, rate = apply_style_model(run, content, output, device, force)
    print(f"wrote {output}: {count} image{'s' if count != 1 else ''}, {rate:,.1f} images/s")


@app.command()
def probe(
    device: DeviceOpt = "auto",
    quick: Annotated[bool, typer.Option("--quick", help="smaller sizes: under a minute")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write every figure to this JSON file")
    ] = None,
    dir_: Annotated[
        Path | None, typer.Option("--dir", help="folder whose storage is tested (default: runs/)")
    ] = None,
    sample_bytes: Annotated[
        int, typer.Option(help="bytes per training sample, for the samples/s ceilings")
    ] = 110_000,
    threads: ThreadsOpt = None,
) -> None:
    """Measure compute, bandwidth and file access, next to the hardware's datasheet peaks."""
    from rich.console import Console

    from gpulab.probe import run_probe
    from gpulab.probe.report import render
    from gpulab.runtime import GpulabError
    from gpulab.runtime.files import atomic_write_json

    if sample_bytes < 1:
        raise GpulabError("--sample-bytes must be at least 1")
    directory = dir_ if dir_ is not None else Path("runs")
    if dir_ is None:
        directory.mkdir(parents=True, exist_ok=True)
    console = Console(width=max(Console().width, 120))
    with console.status("probe ...") as status:
        # a spinner on a terminal; one line per stage in a log, which otherwise stays empty
        say = status.update if console.is_terminal else lambda text: print(text, flush=True)
        result = run_probe(device, quick, directory, sample_bytes, threads, progress=say)
    render(result, console)
    if json_out is not None:
        atomic_write_json(json_out, result)
        console.print(f"json: {json_out}")


@app.command()
def stylize(
    content: Annotated[Path | None, typer.Argument(help="content photo (default: bundled)")] = None,
    style: Annotated[Path | None, typer.Argument(help="style image (default: generated)")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="image to write (.png or .jpg)")
    ] = None,
    content_weight: Annotated[float, typer.Option(help="slider 0..2")] = 1.0,
    style_weight: Annotated[float, typer.Option(help="slider 0..10")] = 5.0,
    size: Annotated[int, typer.Option(help="longer side of the output, pixels")] = 512,
    steps: Annotated[int, typer.Option(help="optimiser steps (L-BFGS: loss evaluations)")] = 300,
    optimizer: Annotated[str, typer.Option(help="adam or lbfgs")] = "adam",
    init: Annotated[
        str, typer.Option(help="start from the content image or from noise")
    ] = "content",
    tv_weight: Annotated[float, typer.Option(help="total-variation weight")] = 1e-3,
    lr: Annotated[float, typer.Option(help="Adam learning rate on pixels in [0, 1]")] = 0.02,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    save_every: Annotated[int, typer.Option(help="intermediate image every K steps; 0: none")] = 0,
    cuda_graph: Annotated[
        bool, typer.Option("--cuda-graph/--no-cuda-graph", help="Adam on CUDA: replay the step")
    ] = True,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option(help="fp32, tf32, bf16 or fp16")] = "fp32",
    vgg_weights: Annotated[Path | None, typer.Option(help="VGG19 state dict (.pth)")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    out: OutOpt = Path("runs"),
    quiet: QuietOpt = False,
) -> None:
    """Style transfer by optimising one image (Gatys et al.): CONTENT in the style of STYLE.
    A trained style network is applied with `gpulab predict style`."""
    from gpulab.runtime.progress import ProgressBar
    from gpulab.workloads.style.optimize import StylizeConfig
    from gpulab.workloads.style.workload import run_stylize

    cfg = StylizeConfig(
        content_weight, style_weight, size, steps, optimizer, init, tv_weight, lr, seed,
        save_every, cuda_graph,
    )  # fmt: skip
    with ProgressBar("stylize", steps, enabled=not quiet) as bar:
        run_dir, record = run_stylize(
            content, style, output, cfg, device, precision, vgg_weights, out, force, threads,
            progress=bar.update,
        )  # fmt: skip
    _print_stylized(record, output, run_dir)


def _print_stylized(record: "RunRecord", output: Path | None, run_dir: Path) -> None:
    t, m, opts = record.timing, record.metrics, record.options
    print(
        f"{record.inputs.content} in the style of {record.inputs.style}: "
        f"{t.seconds_per_image:.2f} s ({t.seconds_per_step_median * 1e3:.1f} ms/step) on "
        f"{opts.device} ({opts.precision}); losses: content "
        f"{m['final_content']:.4g}, style {m['final_style']:.4g}; VGG19 "
        f"{'pretrained' if record.pretrained else 'NOT pretrained (random weights)'}"
    )
    if output is not None:
        print(f"wrote {output}")
    print(f"run: {run_dir}")


report_app = typer.Typer(
    help="Bench and share reports: compare two result sets.", no_args_is_help=True
)
app.add_typer(report_app, name="report")


@report_app.command("compare")
def report_compare(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="two or more bench report folders (or results.json), or two share ones"
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="also write the comparison (Markdown; with 3+ results a chart each beside it)"
        ),
    ] = None,
) -> None:
    """Bench results side by side: two (B against A, e.g. bare metal vs a VM) or a fleet (each
    machine against the first, named by its --tag); or two share results (e.g. timeslice vs
    partition): NP per job, STP, ANTT, fairness. Ratios carry 95% intervals from the repeats."""
    from gpulab.bench.compare import compare_text
    from gpulab.runtime.files import atomic_write_text

    text = compare_text(results, out)
    print(text, end="")
    if out is not None:
        atomic_write_text(out, text)


@app.command()
def bench(
    workloads: Annotated[list[str] | None, typer.Argument(help="workloads (default: all)")] = None,
    devices: Annotated[
        str | None, typer.Option(help="comma-separated, e.g. cpu,cuda (default: all here)")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="short runs (the default)")] = False,
    full: Annotated[bool, typer.Option("--full", help="the study's settings")] = False,
    repeats: Annotated[
        int | None, typer.Option(help="runs per workload, device and mode (quick 1, full 3)")
    ] = None,
    threads: ThreadsOpt = None,
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="skip the quick probe before the suite")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="write into a non-empty --out")] = False,
    diagnose: Annotated[
        bool, typer.Option("--diagnose", help="cnn --data DIR: is training input-bound, and why")
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="--diagnose: an ImageFolder or packed shards")
    ] = None,
    model: Annotated[str, typer.Option(help="--diagnose: the cnn model")] = "resnet50",
    batch: Annotated[int, typer.Option(help="--diagnose: global batch")] = 64,
    steps: Annotated[int, typer.Option(help="--diagnose: timed steps per measurement")] = 30,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="--diagnose: cnn setting KEY=VALUE")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="--diagnose: write the result as JSON")
    ] = None,
    probe: Annotated[
        Path | None, typer.Option(help="--diagnose: a `gpulab probe --json` file to stand beside")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="report folder (default runs/bench/<time>); --diagnose: runs root"),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(help="this machine's name in the results (report compare shows it)"),
    ] = None,
) -> None:
    """The main job: every workload on every device, throughput and time to quality, then
    report.md, report.html and results.json. With --diagnose: whether a cnn run on real files
    is input-bound, and which stage bounds it."""
    from gpulab.bench.suite import run_suite
    from gpulab.runtime import GpulabError

    if quick and full:
        raise GpulabError("--quick and --full exclude each other; pass one")
    if diagnose:
        if workloads != ["cnn"] or data is None:
            raise GpulabError("--diagnose runs as `gpulab bench cnn --data DIR --diagnose`")
        settings = {"model": model, "batch": batch, "steps": steps, "sets": set_ or []}
        _bench_diagnose(data, settings, devices, threads, json_out, probe, out)
        return
    run_suite(
        workloads or None, devices, full=full, repeats=repeats, out=out, force=force,
        threads=threads, probe=not no_probe, tag=tag,
    )  # fmt: skip


def _bench_diagnose(data, settings, devices, threads, json_out, probe, out) -> None:
    """`gpulab bench cnn --data DIR --diagnose`: its own model, batch and timed steps (the
    diagnosis measures one configuration several ways, not a training run)."""
    from gpulab.bench.diagnose import diagnose as run_diagnosis
    from gpulab.bench.diagnose import render
    from gpulab.runtime import GpulabError
    from gpulab.runtime.device import set_cpu_threads
    from gpulab.runtime.files import atomic_write_json

    if settings["batch"] < 1 or settings["steps"] < 1:
        raise GpulabError("--batch and --steps must be at least 1")
    set_cpu_threads(threads)
    result = run_diagnosis(
        data, settings["model"], settings["batch"], settings["steps"], device=devices or "auto",
        out=out or Path("runs"), overrides=_parse_sets(settings["sets"]), probe=probe,
    )  # fmt: skip
    print(render(result))
    if json_out is not None:
        atomic_write_json(json_out, result)


@app.command()
def share(
    jobs: Annotated[
        list[str] | None,
        typer.Argument(
            help="JOBs: stocks, cnn:model=resnet18,batch_size=64, 2xdigits (two copies)"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    mode: Annotated[
        str,
        typer.Option(
            help="timeslice, mps (CUDA) or partition; several, comma-separated, run one after "
            "the other and are reported side by side"
        ),
    ] = "timeslice",
    repeats: Annotated[int, typer.Option(help="alone-then-together rounds")] = 1,
    preset: PresetOpt = "default",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="a setting KEY=VALUE for every job")
    ] = None,
    mps_threads: Annotated[
        int | None, typer.Option(help="--mode mps: each job's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    ] = None,
    allow_oversubscribe: Annotated[
        bool, typer.Option("--allow-oversubscribe", help="run even if the peaks exceed memory")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default runs/share/<time>)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """What sharing one device does to each job: every job alone, then all together from a
    common start; NP per job, STP, ANTT and fairness; writes results.json and the reports."""
    from rich.console import Console

    from gpulab.runtime import GpulabError
    from gpulab.share.report import by_mode, write_reports
    from gpulab.share.run import ShareOptions, default_out, run_share, run_share_modes
    from gpulab.share.table import (
        modes_summary,
        render_modes_table,
        render_table,
        set_lines,
        short_summary,
    )

    out = out if out is not None else default_out()
    modes = [m.strip() for m in mode.split(",")]
    options = ShareOptions(
        device=device, mode=modes[0], repeats=repeats, out=out, preset=preset,
        common=_parse_sets(set_ or []), mps_threads_pct=mps_threads,
        allow_oversubscribe=allow_oversubscribe, quiet=quiet,
    )  # fmt: skip
    several = len(modes) > 1
    doc = run_share_modes(jobs or [], options, modes) if several else run_share(jobs or [], options)
    console = Console(width=max(Console().width, 100))
    for results in by_mode(doc).values():
        console.print(render_table(results))
        for line in set_lines(results):
            console.print(line)
    if several:
        console.print(render_modes_table(doc))
        console.print(doc["conclusion"])
    for path in write_reports(out, doc):
        console.print(f"report: {path}")
    if all(j["failed"] for r in by_mode(doc).values() for j in r["jobs"]):
        raise GpulabError(f"no job could be measured; see the errors above and {out}")
    print(json.dumps(modes_summary(doc, out) if several else short_summary(doc, out)))


@app.command()
def cost(
    results: Annotated[
        list[Path], typer.Argument(help="bench result folders (or their results.json)")
    ],
    prices: Annotated[
        Path | None,
        typer.Option(help="price CSV: gpulab's columns or a SkyPilot vms.csv (default: shipped)"),
    ] = None,
    onprem: Annotated[
        Path | None, typer.Option(help="TOML overriding the owned-server defaults")
    ] = None,
    own: Annotated[
        list[str] | None,
        typer.Option("--own", help="an owned-server setting KEY=VALUE for every server"),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="price a device as an instance: DEVICE=INSTANCE (repeatable)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default runs/cost/<time>)")
    ] = None,
) -> None:
    """Money, hours and energy per unit of real work on each option (CPU-only and GPU instances
    on demand or spot, an owned server), and the hours a month above which owning wins."""
    from rich.console import Console

    from gpulab.cost.run import cost_result, write_cost
    from gpulab.cost.table import render_tables, short_summary, study_lines

    result = cost_result(results, prices, onprem, own or [], map_ or [])
    folder, paths = write_cost(result, out)
    console = Console(width=max(Console().width, 160))
    for table in render_tables(result):
        console.print(table)
    for line in [*study_lines(result), *result["notes"], *result["prices"]["notes"]]:
        console.print(line)
    for path in paths[1:]:
        console.print(f"report: {path}")
    print(json.dumps(short_summary(result, folder)))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="GPULAB_TOKEN",
            help="required to bind beyond loopback; every request must send it",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    jobs: Annotated[int, typer.Option(help="jobs running at once on the device")] = 1,
    queue: Annotated[int, typer.Option(help="jobs that may wait; more get 429")] = 8,
    max_upload_mb: Annotated[float, typer.Option(help="largest upload accepted, MB")] = 20,
    out: OutOpt = Path("runs"),
) -> None:
    """The web UI: style transformation platform, captions, runs and reports."""
    import ipaddress

    from gpulab.runtime import GpulabError
    from gpulab.runtime.device import resolve_device

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise GpulabError("gpulab serve needs the web extra: pip install 'gpulab[web]'") from None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise GpulabError(
            f"--host {host} is reachable from other machines; pass --token (or GPULAB_TOKEN)"
        )
    if jobs < 1 or queue < 0 or max_upload_mb <= 0:
        raise GpulabError("--jobs must be at least 1, --queue 0 or more, --max-upload-mb above 0")
    resolve_device(device)
    from gpulab.web.app import create_app

    app = create_app(out / "web", out, device, token, jobs, queue, max_upload_mb)
    print(f"gpulab serve: http://{host}:{port}/" + (f"?token={token}" if token else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _one_line(message: str) -> str:
    """A GpulabError raised in a DataLoader worker arrives wrapped with its traceback: keep the
    message alone."""
    lines = message.strip().splitlines()
    if len(lines) > 1 and "GpulabError: " in lines[-1]:
        return lines[-1].split("GpulabError: ", 1)[1]
    return message


def main() -> None:
    from gpulab.runtime.errors import GpulabError

    try:
        app()
    except GpulabError as e:
        print(f"gpulab: error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gpulab: interrupted", file=sys.stderr)
        sys.exit(130)
