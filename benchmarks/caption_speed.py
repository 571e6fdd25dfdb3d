"""Caption training speed: samples/s on each device, and 1 vs 2 processes (scaling efficiency).

Each configuration runs `gpulab train caption` in its own process (under torchrun for several
processes) on the same generated scenes with the same global batch, and reads the throughput
from its run record. Scaling efficiency = samples/s with N processes / (N x samples/s with 1).

    PYTHONPATH=src python3 benchmarks/caption_speed.py [--devices cpu,cuda] [--epochs 2]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

METHOD_VERSION = 1


def run(device: str, nproc: int, out: Path, epochs: int, threads: int) -> dict:
    args = [
        "train",
        "caption",
        "--device",
        device,
        "--epochs",
        str(epochs),
        "--eval-every",
        "0",
        "--checkpoint-every",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "gpulab", *args, "--threads", str(threads)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "gpulab",
            *args,
            "--threads",
            str(max(1, threads // nproc)),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nproc))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("run: ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{device} x{nproc} failed: {proc.stderr.strip().splitlines()[-1:]}")
    record = json.loads((Path(lines[-1][5:]) / "record.json").read_text())
    return {
        "samples_per_s": record["timing"]["samples_per_s"],
        "bleu4_beam": record["metrics"]["bleu4_beam"],
        "train_s": record["timing"]["train_s"],
        "world_size": record["options"]["world_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
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
    print(
        json.dumps(
            {
                "benchmark": "caption_speed",
                "method_version": METHOD_VERSION,
                "epochs": args.epochs,
                "threads": args.threads,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
