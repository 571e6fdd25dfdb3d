"""stocks training speed: gpulab vs a plain PyTorch port of the original per-batch loop.

Both train the study's network for 10 epochs on the same 41,266 x 500 scaled data (batch 256,
no periodic evaluation), on the same device, in this one process. The plain port does what the
original did: shuffle indices on the host each epoch, slice the batch on the host, copy it to
the device, step. gpulab keeps the data on the device and replays a captured CUDA graph.

    PYTHONPATH=src python3 benchmarks/stocks_speed.py [--devices cuda,cpu] [--repeats 3]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gpulab.probe.peaks import training_peak
from gpulab.runtime.device import resolve_device, set_cpu_threads, synchronize
from gpulab.runtime.precision import resolve_precision
from gpulab.runtime.records import RunRecord
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload
from gpulab.workloads.stocks.data import generate_stocks, split_and_scale

METHOD_VERSION = 1


def plain_port(
    x_train: np.ndarray,
    y_train: np.ndarray,
    device: torch.device,
    epochs: int = 10,
    batch: int = 256,
    seed: int = 0,
) -> float:
    """The original loop, ported plainly; returns seconds for all epochs (synchronized)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layers, width = [], x_train.shape[1]
    for h in (1024, 512, 256, 128):
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 1))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        xs, ys = x_train[order], y_train[order]
        for i in range(len(ys) // batch):
            xb = torch.from_numpy(xs[i * batch : (i + 1) * batch]).to(device)
            yb = torch.from_numpy(ys[i * batch : (i + 1) * batch]).to(device)
            opt.zero_grad()
            loss = loss_fn(model(xb).squeeze(-1), yb)
            loss.backward()
            opt.step()
    synchronize(device)
    return time.perf_counter() - start


def gpulab_run(
    device: str, out: Path, cuda_graph: bool | None, compile: bool = False, precision: str = "fp32"
) -> tuple[float, RunRecord]:
    cfg = get_workload("stocks").config("default", {"eval_every": "0"})
    options = TrainOptions(
        device=device,
        out=out,
        quiet=True,
        checkpoint_every_epochs=0,
        cuda_graph=cuda_graph,
        compile=compile,
        precision=precision,
        datasheet_peak=training_peak(device),
        command=["benchmarks/stocks_speed.py"],
    )
    record = train("stocks", cfg, options).record
    return record.timing.train_s, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cuda,cpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-repeats", type=int, default=1)
    args = parser.parse_args()

    frame = generate_stocks()
    split = split_and_scale(frame, 0.8, 256, "generated")
    x = np.ascontiguousarray(split.x_train, dtype=np.float32)
    y = np.ascontiguousarray(split.y_train, dtype=np.float32)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.devices.split(","):
            device = resolve_device(name)
            resolve_precision("fp32", device)
            set_cpu_threads(None)  # the plain port gets the same CPU threads gpulab uses
            repeats = args.repeats if device.type == "cuda" else args.cpu_repeats
            plain_port(x, y, device, epochs=1)  # warm-up: library load, allocator, kernels
            plain = [plain_port(x, y, device) for _ in range(repeats)]
            row = {"plain_s": statistics.median(plain), "plain_runs_s": plain}
            # label -> (cuda_graph, compile, precision); "gpulab" is the default command
            variants = {"gpulab": (None, False, "fp32")}
            if device.type == "cuda":
                variants |= {
                    "gpulab_eager": (False, False, "fp32"),
                    "gpulab_compile": (None, True, "fp32"),
                    "gpulab_tf32": (None, False, "tf32"),
                }
            for label, (graph, compiled, precision) in variants.items():
                runs = [
                    gpulab_run(name, Path(tmp), graph, compiled, precision) for _ in range(repeats)
                ]
                row[f"{label}_s"] = statistics.median(t for t, _ in runs)
                row[f"{label}_runs_s"] = [t for t, _ in runs]
                row[f"{label}_test_mse"] = runs[-1][1].metrics["test_mse"]
                row[f"{label}_step_median_ms"] = runs[-1][1].timing.step_median_s * 1e3
                row[f"{label}_setup_s"] = runs[0][1].timing.setup_s  # first run: cold caches
                row["device_name"] = runs[-1][1].device_name
                row["threads"] = torch.get_num_threads()
            for label in variants:
                row[f"plain_over_{label}"] = row["plain_s"] / row[f"{label}_s"]
            results[name] = row

    print(
        f"{'device':<6} {'name':<24} {'variant':<15} {'train s':>8} {'setup s':>8} "
        f"{'test MSE':>9} {'plain port s':>13} {'plain/variant':>14}"
    )
    for name, r in results.items():
        for label in [
            k.removesuffix("_s")
            for k in r
            if k.startswith("gpulab")
            and k.endswith("_s")
            and not k.endswith(("_runs_s", "_setup_s"))
        ]:
            print(
                f"{name:<6} {r['device_name'][:24]:<24} {label:<15} {r[f'{label}_s']:>8.3f} "
                f"{r[f'{label}_setup_s']:>8.2f} {r[f'{label}_test_mse']:>9.2e} {r['plain_s']:>13.3f} "
                f"{r[f'plain_over_{label}']:>13.1f}x"
            )
    summary = {
        "benchmark": "stocks_speed",
        "method_version": METHOD_VERSION,
        "epochs": 10,
        "rows": 41_266,
        "stocks": 500,
        "batch": 256,
        "results": results,
    }
    if "cpu" in results and "cuda" in results:
        summary["gpulab_cpu_over_gpulab_cuda"] = (
            results["cpu"]["gpulab_s"] / results["cuda"]["gpulab_s"]
        )
        print(
            f"gpulab on the GPU is {summary['gpulab_cpu_over_gpulab_cuda']:.1f}x faster than gpulab "
            f"on this machine's CPU ({results['cpu']['threads']} threads)"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
