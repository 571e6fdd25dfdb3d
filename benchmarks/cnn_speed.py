"""CNN training throughput: gpulab's `train cnn` vs plain torchvision loops, on one device, one run.

For each model (VGG16, ResNet-50, AlexNet by default), images/s of:
  plain      a plain torchvision training loop: fp32 (PyTorch defaults), batch 64, NCHW,
             SGD with momentum, synthetic data made once on the device;
  plain-best the best plain loop: bf16 autocast + channels_last, batch 128;
  gpulab     `gpulab train cnn` at batch 128 with its GPU settings (bf16, channels_last, fused
             SGD, the whole step in a CUDA graph) eager (--compile=off), and compiled, which
             is its default on CUDA;
plus gpulab on the CPU (smaller batch and step count), for the CPU-vs-GPU ratio. The plain
loops time `steps` steps after `warmup` with synchronize-then-clock; gpulab's figures come from
its run record (CUDA events per step, the same warm-up excluded). MFU uses the datasheet peak
of the precision used (dense bf16 for bf16).

    PYTHONPATH=src python3 benchmarks/cnn_speed.py [--models vgg16,resnet50,alexnet]
        [--steps 50] [--warmup 10] [--size 224] [--cpu-batch 16] [--cpu-steps 3] [--no-compile]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

from gpulab.probe.peaks import training_peak
from gpulab.runtime.device import resolve_device, synchronize
from gpulab.runtime.precision import set_tf32
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload

METHOD_VERSION = 1


def plain_loop(model_name, device, batch, steps, warmup, size, bf16, channels_last) -> float:
    """images/s of the textbook loop: model(x), cross-entropy, backward, SGD step."""
    torch.manual_seed(0)
    set_tf32(False)
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default for convolutions
    torch.backends.cudnn.benchmark = False
    model = getattr(torchvision.models, model_name)(weights=None).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(1000, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step():
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch * steps / (time.perf_counter() - t0)


def gpulab_run(model_name, device, batch, steps, warmup, size, compile_, out) -> dict:
    overrides = {
        "model": model_name,
        "batch_size": str(batch),
        "steps": str(steps + warmup),
        "warmup_steps": str(warmup),
        "image_size": str(size),
    }
    cfg = get_workload("cnn").config("default", overrides)
    peak = training_peak(str(device))
    options = TrainOptions(
        device=str(device), compile=compile_, out=out, quiet=True, datasheet_peak=peak
    )
    record = train("cnn", cfg, options).record
    eff = record.efficiency
    return {
        "images_per_s": record.timing.samples_per_s,
        "precision": record.options.precision,
        "cuda_graph": record.options.cuda_graph,
        "mfu": eff.mfu,
        "achieved_tflops": eff.achieved_tflops,
        "peak_memory_gib": (record.memory.peak_allocated_bytes or 0) / 2**30,
    }


def print_row(name: str, r: dict) -> None:
    g = r["gpulab"]
    cell = lambda v: f"{v:.0f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    mfu = f"{100 * g['mfu']:.0f}%" if g["mfu"] is not None else "-"
    print(
        f"{name:<9} {cell(r['plain']):>8} {cell(r.get('plain_best')):>11} "
        f"{cell(g['images_per_s']):>8} {cell(r.get('gpulab_compile', {}).get('images_per_s')):>9} "
        f"{mfu:>6} {r.get('gpulab_vs_plain_best', r['gpulab_vs_plain']):>7.2f}x "
        f"{cell(r.get('gpulab_cpu', {}).get('images_per_s')):>7}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet50,alexnet")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cpu-batch", type=int, default=16)
    parser.add_argument("--cpu-steps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the --compile variant")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    results = {}
    head = f"{'model':<9} {'plain':>8} {'plain best':>11} {'eager':>8} {'compiled':>9} {'MFU':>6} {'vs best':>8} {'CPU':>7}"
    print(f"images/s on {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'})")
    print(head, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            r = results[name] = {}
            common = (args.steps, args.warmup, args.size)
            r["plain"] = plain_loop(name, device, 64, *common, bf16=False, channels_last=False)
            if gpu:
                r["plain_best"] = plain_loop(
                    name, device, 128, *common, bf16=True, channels_last=True
                )
            batch = 128 if gpu else 64
            r["gpulab"] = gpulab_run(name, device, batch, *common, False, tmp)
            if gpu and not args.no_compile:
                r["gpulab_compile"] = gpulab_run(name, device, batch, *common, True, tmp)
            if gpu:
                cpu_settings = (args.cpu_batch, args.cpu_steps, 1, args.size, False, tmp)
                r["gpulab_cpu"] = gpulab_run(name, torch.device("cpu"), *cpu_settings)
            best = max(
                (
                    v["images_per_s"]
                    for k, v in r.items()
                    if k.startswith("gpulab") and k != "gpulab_cpu"
                )
            )
            r["gpulab_vs_plain"] = best / r["plain"]
            if gpu:
                r["gpulab_vs_plain_best"] = best / r["plain_best"]
                r["gpu_vs_cpu"] = r["gpulab"]["images_per_s"] / r["gpulab_cpu"]["images_per_s"]
            print_row(name, r)
    print(
        json.dumps(
            {
                "benchmark": "cnn_speed",
                "method_version": METHOD_VERSION,
                "device": str(device),
                "steps": args.steps,
                "warmup": args.warmup,
                "size": args.size,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
