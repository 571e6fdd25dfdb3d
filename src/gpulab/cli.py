"""gpulab's command line: the only place that parses arguments.

Every subcommand is thin: it calls a plain library function. A GpulabError becomes a one-line
message on stderr and exit code 2, never a traceback.
"""

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Annotated

import typer

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
data_app = typer.Typer(help="Generate the embedded default data sets.", no_args_is_help=True)
predict_app = typer.Typer(help="Use a trained run's checkpoint.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(predict_app, name="predict")

OutOpt = Annotated[Path, typer.Option("--out", help="runs root: records go to OUT/WORKLOAD/RUN")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]


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


@app.command()
def train(
    workload: Annotated[str, typer.Argument(help="workload name, e.g. stocks")],
    device: DeviceOpt = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="fp32 (TF32 off), tf32, bf16, fp16, or auto: the workload's choice "
            "(cnn: bf16 on a GPU; others fp32)"
        ),
    ] = "auto",
    data: Annotated[str | None, typer.Option(help="the workload's data file or folder")] = None,
    preset: Annotated[
        str, typer.Option(help="default (the study's settings) or debug")
    ] = "default",
    epochs: Annotated[int | None, typer.Option(help="override the preset's epochs")] = None,
    batch_size: Annotated[
        str | None,
        typer.Option("--batch-size", "--batch", help="global batch size; cnn: or 'auto'"),
    ] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="steps between evaluations; 0: only at the end")
    ] = None,
    images: Annotated[str | None, typer.Option(help="style: folder of content images")] = None,
    style: Annotated[str | None, typer.Option(help="style: the style image")] = None,
    size: Annotated[int | None, typer.Option(help="style: training crop size, pixels")] = None,
    content_weight: Annotated[float | None, typer.Option(help="style: slider 0..2")] = None,
    style_weight: Annotated[float | None, typer.Option(help="style: slider 0..10")] = None,
    vgg_weights: Annotated[str | None, typer.Option(help="style: VGG19 state dict")] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="caption: train without unreadable images")
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="cnn: vgg16, alexnet, resnet50 or resnet18")
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last", help="cnn: NHWC (default: on CUDA)"),
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help="steps left out of the throughput statistics")
    ] = None,
    probe: Annotated[
        Path | None, typer.Option(help="a `gpulab probe --json` file: MFU of its measured peak")
    ] = None,
    stop_at_quality: Annotated[
        bool,
        typer.Option(
            "--stop-at-quality", help="stop at the workload's quality target (time-to-quality)"
        ),
    ] = False,
    decode: Annotated[
        str | None, typer.Option(help="cnn on packed shards: cpu, gpu (nvJPEG) or auto")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="caption: small, or frozen vgg16, resnet18, resnet50")
    ] = None,
    encoder_weights: Annotated[
        str | None, typer.Option(help="caption: the backbone's ImageNet state dict")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="any config field, KEY=VALUE (repeatable)")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="stop after this many steps (resume later with --resume)")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="continue a stopped run folder")] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the model (--compile=auto: if it can; default: cnn on CUDA)",
        ),
    ] = None,
    compile_auto: Annotated[bool, typer.Option("--compile-auto", hidden=True)] = False,
    cuda_graph: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graph/--no-cuda-graph", help="capture the step (default: when possible)"
        ),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="epochs between checkpoints; 0: only at the end")
    ] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch")] = None,
    out: OutOpt = Path("runs"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Train a workload; writes OUT/WORKLOAD/RUN/record.json, plots and a checkpoint."""
    from gpulab.probe.peaks import training_peak
    from gpulab.runtime import GpulabError, print0
    from gpulab.train import TrainOptions
    from gpulab.train import train as run_training
    from gpulab.workloads.registry import get_workload

    spec = get_workload(workload)
    overrides = _parse_sets(set_ or [])
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    if batch_size == "auto":
        if "auto_batch" not in fields:
            raise GpulabError(f"--batch auto: {workload} has no batch search; pass a number")
        overrides["auto_batch"], batch_size = "true", None
    elif batch_size is not None and not batch_size.isdigit():
        raise GpulabError(f"--batch {batch_size}: pass a whole number (or auto for cnn)")
    if steps is not None and "steps" in fields:  # cnn's synthetic epochs are counted in steps
        overrides["steps"], steps = str(steps), None
    for key, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("model", model),
        ("channels_last", channels_last),
        ("warmup_steps", warmup),
        ("lr", lr),
        ("seed", seed),
        ("eval_every", eval_every),
        ("data", data),
        ("images", images),
        ("style", style),
        ("size", size),
        ("content_weight", content_weight),
        ("style_weight", style_weight),
        ("vgg_weights", vgg_weights),
        ("skip_bad", skip_bad or None),
        ("encoder", encoder),
        ("decode", decode),
        ("encoder_weights", encoder_weights),
    ):
        if value is not None:
            overrides[key] = str(value)
    if resume is not None and (overrides or preset != "default"):
        raise GpulabError("--resume continues a run with its own settings; drop the other settings")
    if threads is not None and threads < 1:
        raise GpulabError("--threads must be at least 1")
    if steps is not None and steps < 1:
        raise GpulabError("--steps must be at least 1")
    if checkpoint_every < 0:
        raise GpulabError("--checkpoint-every must be 0 (only at the end) or more")
    cfg = None if resume is not None else spec.config(preset, overrides)
    options = TrainOptions(
        device=device,
        precision=precision,
        compile="auto" if compile_auto else compile,
        cuda_graph=cuda_graph,
        max_steps=steps,
        checkpoint_every_epochs=checkpoint_every,
        out=out,
        threads=threads,
        quiet=quiet,
        probe=probe,
        datasheet_peak=training_peak(device),
        stop_at_quality=stop_at_quality,
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
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: physical cores)")
    ] = None,
) -> None:
    """Measure compute, bandwidth and file access, next to the hardware's datasheet peaks."""
    from rich.console import Console

    from gpulab.probe import run_probe
    from gpulab.probe.report import render
    from gpulab.runtime import GpulabError
    from gpulab.runtime.files import atomic_write_json

    if sample_bytes < 1:
        raise GpulabError("--sample-bytes must be at least 1")
    if threads is not None and threads < 1:
        raise GpulabError("--threads must be at least 1")
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
    model: Annotated[
        Path | None,
        typer.Option(
            help="a `gpulab train style` run: apply its network (CONTENT may be a folder)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: physical cores)")
    ] = None,
    out: OutOpt = Path("runs"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Style transfer by optimising one image (Gatys et al.): CONTENT in the style of STYLE."""
    from gpulab.runtime import GpulabError
    from gpulab.workloads.style.optimize import StylizeConfig
    from gpulab.workloads.style.workload import run_stylize

    if threads is not None and threads < 1:
        raise GpulabError("--threads must be at least 1")
    if model is not None:
        _apply_style_model(model, content, style, output, device, force)
        return
    cfg = StylizeConfig(
        content_weight,
        style_weight,
        size,
        steps,
        optimizer,
        init,
        tv_weight,
        lr,
        seed,
        save_every,
        cuda_graph,
    )
    from gpulab.runtime.progress import ProgressBar

    with ProgressBar("stylize", steps, enabled=not quiet) as bar:
        run_dir, record = run_stylize(
            content,
            style,
            output,
            cfg,
            device,
            precision,
            vgg_weights,
            out,
            force,
            threads,
            progress=bar.update,
        )
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


def _apply_style_model(model, content, style, output, device, force) -> None:
    from gpulab.runtime import GpulabError
    from gpulab.workloads.style.workload import apply_style_model

    if content is None or output is None or style is not None:
        raise GpulabError("with --model give CONTENT (an image or a folder) and -o, and no STYLE")
    count, rate = apply_style_model(model, content, output, device, force)
    print(f"wrote {output}: {count} image{'s' if count != 1 else ''}, {rate:,.1f} images/s")


@app.command()
def caption(
    images: Annotated[list[Path], typer.Argument(help="images to describe")],
    run: Annotated[Path, typer.Option(help="a `gpulab train caption` run")],
    beam: Annotated[int, typer.Option(help="beam width (1: greedy)")] = 3,
    device: DeviceOpt = "auto",
) -> None:
    """Caption images with a trained model: one line each, with the caption's log-probability."""
    from gpulab.workloads.caption.workload import caption_images

    for row in caption_images(images, run, beam, device):
        print(f"{row['image']}: {row['caption']}  (log p = {row['logprob']:.3f})")


report_app = typer.Typer(help="Bench reports: compare two result sets.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("compare")
def report_compare(
    a: Annotated[Path, typer.Argument(help="a bench report folder or its results.json")],
    b: Annotated[Path, typer.Argument(help="the other one")],
    out: Annotated[Path | None, typer.Option(help="also write the comparison (Markdown)")] = None,
) -> None:
    """Two bench result sets side by side (e.g. bare metal vs a VM): ratios B/A and noise."""
    from gpulab.bench.compare import compare, load_results, render
    from gpulab.runtime.files import atomic_write_text

    text = render(compare(load_results(a), load_results(b)), str(a), str(b))
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
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for every run (default: physical cores)")
    ] = None,
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
        list[str] | None, typer.Option("--set", help="--diagnose: cnn config KEY=VALUE")
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
) -> None:
    """The main job: every workload on every device, throughput and time to quality, then
    report.md, report.html and results.json. With --diagnose: whether a cnn run on real files
    is input-bound, and which stage bounds it."""
    from gpulab.runtime import GpulabError

    if threads is not None and threads < 1:
        raise GpulabError("--threads must be at least 1")
    if quick and full:
        raise GpulabError("--quick and --full exclude each other; pass one")
    if diagnose:
        if workloads != ["cnn"] or data is None:
            raise GpulabError("--diagnose runs as `gpulab bench cnn --data DIR --diagnose`")
        from gpulab.bench.diagnose import diagnose as run_diagnosis
        from gpulab.bench.diagnose import render
        from gpulab.runtime.device import set_cpu_threads
        from gpulab.runtime.files import atomic_write_json

        if batch < 1 or steps < 1:
            raise GpulabError("--batch and --steps must be at least 1")
        set_cpu_threads(threads)
        result = run_diagnosis(
            data,
            model,
            batch,
            steps,
            device=devices or "auto",
            out=out or Path("runs"),
            overrides=_parse_sets(set_ or []),
            probe=probe,
        )
        print(render(result))
        if json_out is not None:
            atomic_write_json(json_out, result)
        return
    from gpulab.bench.suite import run_suite

    run_suite(
        workloads or None,
        devices,
        full=full,
        repeats=repeats,
        out=out,
        force=force,
        threads=threads,
        probe=not no_probe,
    )


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


def _compile_flag(arg: str) -> str:
    """`--compile=auto|on|off` as flags: typer has no option that is both a flag and a value."""
    if not arg.startswith("--compile="):
        return arg
    value = arg.split("=", 1)[1].lower()
    flags = {
        "auto": "--compile-auto",
        "on": "--compile",
        "true": "--compile",
        "off": "--no-compile",
    }
    if value not in flags:
        from gpulab.runtime.errors import GpulabError

        raise GpulabError(f"{arg}: use --compile, --compile=auto or --compile=off")
    return flags[value]


def main() -> None:
    from gpulab.runtime.errors import GpulabError

    try:
        sys.argv[1:] = [f for f in map(_compile_flag, sys.argv[1:]) if f]
        app()
    except GpulabError as e:
        print(f"gpulab: error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gpulab: interrupted", file=sys.stderr)
        sys.exit(130)
