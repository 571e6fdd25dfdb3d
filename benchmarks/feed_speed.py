"""Feeding the GPU: ResNet-50 training on a JPEG folder, plain loader vs gpulab's pipeline.

In one run, on one device, with the same model step (bf16 autocast, channels_last, SGD; eager,
so that only the input pipelines differ; `--compile` compiles gpulab's rows as its cnn default
on CUDA does):
  synthetic  `gpulab train cnn` on synthetic batches made on the device: the compute ceiling;
  plain      a plain loop over torchvision's ImageFolder + DataLoader (pin_memory, workers as
             `train cnn` chooses them, RandomResizedCrop + flip + ToTensor + Normalize on the CPU);
  gpulab     `gpulab train cnn --set data=PACKED` on the folder packed into shards, decoded on the
             GPU (nvJPEG) and, as a second row, on the CPU workers;
each as images/s and as a fraction of synthetic; then the loaders alone, with no training,
each delivering batches onto the device as its training step takes them: the plain DataLoader
vs gpulab's shard stream with CPU decoding (and, on CUDA, with nvJPEG), same workers, which
says how much faster one loader is than the other where the GPU's ceiling does not cap both.
`--loader-only` (for CPU machines) runs only that last comparison.

Both loaders read ahead (2 batches per worker, the DataLoader default), and their workers fill
that read-ahead while the model is built and warms up; the batches in it cost the timed steps
nothing. The warm-up therefore defaults to more steps than the read-ahead holds, and the loaders
alone, which have no read-ahead to spend, are the sustained rates.

    PYTHONPATH=src python3 benchmarks/feed_speed.py --generate 20000 [--model resnet50]
        [--batch 128] [--steps 100] [--warmup N] [--workers N] [--images DIR] [--loader-only]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms as T

from gpulab.bench.diagnose import loader_rate
from gpulab.data import shards
from gpulab.data.batches import loader_workers, read_ahead
from gpulab.data.decode import IMAGENET_MEAN, IMAGENET_STD
from gpulab.data.generate import write_image_folder
from gpulab.data.stream import Decoding, ShardBatches
from gpulab.probe.peaks import training_peak
from gpulab.runtime.device import resolve_device, synchronize
from gpulab.runtime.distributed import DistInfo
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload

# 3: warm-up past the read-ahead; the loaders alone timed after each worker's first batch
METHOD_VERSION = 3


def plain_loader(folder: Path, batch: int, workers: int, size: int, pin: bool):
    tf = T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    data = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=False,
    )


def plain_training(folder, model_name, device, batch, steps, warmup, workers, size) -> float:
    """images/s of the textbook loop over ImageFolder + DataLoader, bf16 + channels_last."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    classes = len([d for d in folder.iterdir() if d.is_dir()])
    model = getattr(torchvision.models, model_name)(num_classes=classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = plain_loader(folder, batch, workers, size, pin=device.type == "cuda")
    done, t0 = 0, None
    while done < steps + warmup:
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup:
                synchronize(device)
                t0 = time.perf_counter()
            if done == steps + warmup:
                break
    synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def gpulab_training(
    data, model_name, device, batch, steps, warmup, workers, size, decode, out, compile_
):
    overrides = {
        "model": model_name,
        "data": str(data),
        "batch_size": str(batch),
        "steps": str(steps + warmup),
        "warmup_steps": str(warmup),
        "image_size": str(size),
        "workers": str(workers),
        "decode": decode,
    }
    if data == "synthetic":
        del overrides["decode"], overrides["workers"]
    cfg = get_workload("cnn").config("default", overrides)
    peak = training_peak(str(device))
    options = TrainOptions(
        device=str(device), out=out, quiet=True, compile=compile_, datasheet_peak=peak
    )
    record = train("cnn", cfg, options).record
    return record.timing.samples_per_s


def loaders_only(folder, packed, device, batch, steps, workers, size) -> dict:
    """images/s of the loaders alone (no training): batches as the training step takes them,
    on `device`. The plain loader's normalised float32 batches are pinned and copied there;
    gpulab's uint8 batches are copied and normalised there (on a GPU, on the GPU), and on CUDA
    also decoded there (nvJPEG) as a third row."""

    def plain():
        for x, y in plain_loader(folder, batch, workers, size, pin=device.type == "cuda"):
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield x, y.to(device, non_blocking=True)

    def gpulab(decode: str):
        s = shards.ShardSet(packed)
        dist = DistInfo(1, 0, 0, None)
        dec = Decoding(decode, size, True, 0)
        args = (np.arange(len(s)), batch, dist, 0, device, dec, workers)
        return ShardBatches(s, *args, channels_last=True).epoch(0)

    warm = workers + 1  # the workers' first batches, made before the clock starts
    rates = {
        "plain_loader": loader_rate(plain(), device, steps, warm),
        "gpulab_loader": loader_rate(gpulab("cpu"), device, steps, warm),
    }
    if device.type == "cuda":
        rates["gpulab_gpu_decode_loader"] = loader_rate(gpulab("gpu"), device, steps, warm)
    return rates


def check_window(args, images: int) -> None:
    """The training rows' warm-up and timed steps must fit in one epoch of the images."""
    batches = images // args.batch
    if not args.loader_only and args.warmup + args.steps > batches:
        print(
            f"--warmup {args.warmup} + --steps {args.steps} exceed one epoch of {batches} "
            "batches: generate more images or take fewer steps",
            file=sys.stderr,
        )
        raise SystemExit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="an existing ImageFolder")
    parser.add_argument("--generate", type=int, default=20_000, help="images to generate")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--warmup",
        type=int,
        help="untimed steps first (default: the read-ahead of both loaders + 8)",
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=loader_workers(None))  # train cnn's
    parser.add_argument("--loader-only", action="store_true")
    parser.add_argument("--compile", action="store_true", help="compile gpulab's training rows")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = read_ahead(args.workers) + 8
    device = resolve_device(args.device)
    if args.images is None:
        check_window(args, args.generate)  # before minutes of writing images
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.images
        t0 = time.perf_counter()
        if folder is None:
            folder = tmp / "images"
            write_image_folder(folder, args.generate, None, args.classes, workers=args.workers)
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        classes, files, samples = shards.image_folder_samples(folder)
        shards.pack(samples(), tmp / "packed", "imagefolder", 256, {"classes": classes})
        pack_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f, _ in files) / 2**20
        check_window(args, len(files))
        result = {
            "images": len(files),
            "mean_kb": size_mb * 1024 / len(files),
            "generate_s": generate_s,
            "pack_s": pack_s,
        }
        common = (args.steps, args.warmup)
        if not args.loader_only:
            out = tmp / "runs"
            rows = {
                "synthetic": gpulab_training(
                    "synthetic",
                    args.model,
                    device,
                    args.batch,
                    *common,
                    0,
                    args.size,
                    "",
                    out,
                    args.compile,
                ),
                "plain": plain_training(
                    folder, args.model, device, args.batch, *common, args.workers, args.size
                ),
            }
            decodes = ("gpu", "cpu") if device.type == "cuda" else ("cpu",)
            for decode in decodes:
                rows[f"gpulab_{decode}_decode"] = gpulab_training(
                    tmp / "packed",
                    args.model,
                    device,
                    args.batch,
                    *common,
                    args.workers,
                    args.size,
                    decode,
                    out,
                    args.compile,
                )
            result["images_per_s"] = rows
            result["fraction_of_synthetic"] = {k: v / rows["synthetic"] for k, v in rows.items()}
            print(
                f"{args.model} on {device}, batch {args.batch}, {len(files)} JPEGs, {args.workers} workers"
            )
            for k, v in rows.items():
                print(
                    f"  {k:<18} {v:>9,.0f} img/s  {100 * v / rows['synthetic']:5.1f}% of synthetic"
                )
        rates = loaders_only(
            folder, tmp / "packed", device, args.batch, args.steps, args.workers, args.size
        )
        result.update(rates, ratio=rates["gpulab_loader"] / rates["plain_loader"])
        print(
            f"loaders alone: {len(files)} JPEGs ({result['mean_kb']:.0f} KB mean), "
            f"{args.workers} workers, batch {args.batch}, {args.size} px: plain loader "
            f"{rates['plain_loader']:.0f} img/s, gpulab loader {rates['gpulab_loader']:.0f} img/s "
            f"({result['ratio']:.2f}x)"
            + (
                f", gpulab with nvJPEG {rates['gpulab_gpu_decode_loader']:.0f} img/s"
                if "gpulab_gpu_decode_loader" in rates
                else ""
            )
        )
        if "images_per_s" in result:
            synthetic = result["images_per_s"]["synthetic"]
            result["loader_alone_vs_synthetic"] = {k: v / synthetic for k, v in rates.items()}
            print(
                "loaders alone as a fraction of synthetic training (>= 1: the loader sustains "
                "the compute rate): "
                + ", ".join(f"{k} {v:.2f}" for k, v in result["loader_alone_vs_synthetic"].items())
            )
    print(
        json.dumps(
            {
                "benchmark": "feed_speed",
                "method_version": METHOD_VERSION,
                "device": str(device),
                "compile": args.compile,
                "steps": args.steps,
                "warmup": args.warmup,
                "workers": args.workers,
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
