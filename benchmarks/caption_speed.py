"""Caption training speed: samples/s per device, 1 vs 2 processes, cached vs recomputed features.

Each configuration runs `gpulab train caption` in its own process (under torchrun for several
processes) on the same generated scenes with the same global batch, and reads the throughput
from its run record. Scaling efficiency = samples/s with N processes / (N x samples/s with 1).

With a frozen backbone (--backbone, default resnet18) it also times, per device, the same
training step (Adam, batch 64) on features cached once vs with the backbone run on every batch.

    PYTHONPATH=src python3 benchmarks/caption_speed.py [--devices cpu,cuda] [--epochs 2]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpulab.runtime.distributed import torchrun_command
from gpulab.runtime.records import read_record
from gpulab.workloads.caption.data import CaptionPairs, Vocabulary, generate_scenes, pixels_of
from gpulab.workloads.caption.model import Captioner, caption_loss, load_backbone

METHOD_VERSION = 2


def run(device: str, nproc: int, out: Path, epochs: int, threads: int) -> dict:
    args = [
        "train",
        "caption",
        "--device",
        device,
        "--set",
        f"epochs={epochs}",
        "--set",
        "eval_every=0",
        "--checkpoint-every",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    per_process = max(1, threads // nproc)
    if nproc == 1:
        cmd = [sys.executable, "-m", "gpulab", *args, "--threads", str(threads)]
    else:
        cmd = torchrun_command(nproc, *args, "--threads", per_process)
    env = {**os.environ, "OMP_NUM_THREADS": str(per_process)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("run: ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{device} x{nproc} failed: {proc.stderr.strip().splitlines()[-1:]}")
    record = read_record(Path(lines[-1][5:]))
    return {
        "samples_per_s": record.timing.samples_per_s,
        "bleu4_beam": record.metrics["bleu4_beam"],
        "train_s": record.timing.train_s,
        "world_size": record.options.world_size,
    }


def backbone_cost(device: str, name: str, steps: int, size: int = 64, batch: int = 64) -> dict:
    """Training samples/s with the backbone's features cached vs recomputed on every batch."""
    dev = torch.device(device)
    scenes = generate_scenes(batch * 4, size, seed=0)
    vocab = Vocabulary.build([c for caps in scenes.captions for c in caps])
    pixels = pixels_of(scenes, size)
    pairs = CaptionPairs(torch.arange(len(pixels)), scenes, vocab, max_words=15)
    index, tokens = (torch.stack(t) for t in zip(*(pairs[k] for k in range(len(pairs)))))
    backbone = load_backbone(name, None, seed=0)[0].to(dev)
    with torch.no_grad():
        cached = torch.cat(
            [backbone(pixels[i : i + batch].to(dev)) for i in range(0, len(pixels), batch)]
        )
    pixels, tokens, index = pixels.to(dev), tokens.to(dev), index.to(dev)

    def samples_per_s(recompute: bool) -> float:
        torch.manual_seed(0)
        model = Captioner(len(vocab), feature_dim=backbone.dim).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        rows = len(tokens)

        def step(k: int) -> None:
            pick = torch.arange(k * batch, (k + 1) * batch, device=dev) % rows
            inputs = backbone(pixels[index[pick]]) if recompute else cached[index[pick]]
            opt.zero_grad(set_to_none=True)
            caption_loss(model(inputs, tokens[pick]), tokens[pick]).backward()
            opt.step()

        for k in range(3):  # warm-up
            step(k)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for k in range(steps):
            step(k)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - t0)

    cached_rate, recomputed_rate = samples_per_s(False), samples_per_s(True)
    return {
        "backbone": name,
        "image_size": size,
        "cached_samples_per_s": cached_rate,
        "recomputed_samples_per_s": recomputed_rate,
        "speedup": cached_rate / recomputed_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backbone", default="resnet18", help="vgg16, resnet18, resnet50 or none")
    parser.add_argument("--backbone-steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.devices.split(","):
            counts = (1, 2) if device == "cpu" or torch.cuda.device_count() >= 2 else (1,)
            for n in counts:
                rows[f"{device}x{n}"] = run(device, n, Path(tmp), args.epochs, args.threads)
    for key, r in rows.items():
        device, n = key.split("x")
        base = rows.get(f"{device}x1")
        r["scaling_efficiency"] = (
            r["samples_per_s"] / (int(n) * base["samples_per_s"]) if base else None
        )
    print(
        f"{'config':<8} {'samples/s':>10} {'train s':>9} {'scaling eff.':>13} {'BLEU-4 beam':>12}"
    )
    for key, r in rows.items():
        eff = f"{r['scaling_efficiency']:.2f}" if r["scaling_efficiency"] is not None else "-"
        print(
            f"{key:<8} {r['samples_per_s']:>10.0f} {r['train_s']:>9.2f} {eff:>13} {r['bleu4_beam']:>12.3f}"
        )
    features = {}
    if args.backbone != "none":
        print(f"\n{args.backbone} features, training samples/s (batch 64, 64 px):")
        print(f"{'device':<8} {'cached':>10} {'recomputed':>11} {'speed-up':>9}")
        for device in args.devices.split(","):
            f = features[device] = backbone_cost(device, args.backbone, args.backbone_steps)
            print(
                f"{device:<8} {f['cached_samples_per_s']:>10.0f} "
                f"{f['recomputed_samples_per_s']:>11.0f} {f['speedup']:>8.1f}x"
            )
    print(
        json.dumps(
            {
                "benchmark": "caption_speed",
                "method_version": METHOD_VERSION,
                "epochs": args.epochs,
                "threads": args.threads,
                "results": rows,
                "features": features,
            }
        )
    )


if __name__ == "__main__":
    main()
