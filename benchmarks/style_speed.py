"""Style transfer speed: gpulab vs plain PyTorch loops of the same work, on one device, one run.

(a) Optimisation (Gatys): gpulab's `stylize` against a plain tutorial-structured loop (VGG19
    truncated after relu5_1, loss modules, Adam on the pixels), same images, size and steps.
    The plain loop runs with PyTorch's defaults (float32 tensors; cuDNN convolutions may use
    TF32, matmuls not); gpulab runs fp32 (TF32 off), tf32 and bf16 with its step replayed from
    a CUDA graph (the default on CUDA), and tf32 eager (--no-cuda-graph) to show what the graph
    buys. tf32 is the plain loop's arithmetic.
(b) Feed-forward training: images/s of gpulab's `train style` (fp32, tf32, bf16) against a plain
    loop of the same network and losses over the same crops.
(c) CPU vs GPU seconds per image for (a), with fp32 on both and with each device's default
    (CPU fp32, GPU bf16 graphed), next to the study's 45x (500 h vs 11 h).

    PYTHONPATH=src python3 benchmarks/style_speed.py [--devices cuda,cpu] [--size 512] [--steps 300]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision

from gpulab.bench.study import STUDY
from gpulab.data.samples import bundled_photo, generated_painting
from gpulab.probe.peaks import training_peak
from gpulab.runtime.device import resolve_device, synchronize
from gpulab.runtime.precision import resolve_precision
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload
from gpulab.workloads.style.data import bundled_crops
from gpulab.workloads.style.model import IMAGENET_MEAN, IMAGENET_STD, TransformerNet
from gpulab.workloads.style.optimize import STYLE_BASE, StylizeConfig, prepare_images, stylize
from gpulab.workloads.style.weights import load_vgg19

METHOD_VERSION = 2
STYLE_IDX, CONTENT_IDX = (1, 6, 11, 20, 29), 22


def plain_vgg(device):
    """The tutorial's network: vgg19().features cut after relu5_1, ReLUs not in place."""
    torch.manual_seed(0)
    layers = [
        torch.nn.ReLU() if isinstance(m, torch.nn.ReLU) else m
        for m in torchvision.models.vgg19(weights=None).features[:30]
    ]
    return torch.nn.Sequential(*layers).to(device).eval().requires_grad_(False)


def plain_features(net, x, mean, std):
    x, out = (x - mean) / std, {}
    for i, layer in enumerate(net):
        x = layer(x)
        if i in STYLE_IDX or i == CONTENT_IDX:
            out[i] = x
    return out


def plain_gram(f):
    b, c, h, w = f.shape
    f = f.view(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def plain_gatys(content, style, device, steps, style_weight=5.0 * STYLE_BASE, tv_weight=1e-3):
    """Seconds for `steps` Adam steps of a plain loop (defaults: cuDNN TF32 allowed)."""
    torch.backends.fp32_precision = "none"  # PyTorch's defaults, as a tutorial runs
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    net = plain_vgg(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    with torch.no_grad():
        c_target = plain_features(net, content, mean, std)[CONTENT_IDX]
        s_targets = {
            i: plain_gram(f)
            for i, f in plain_features(net, style, mean, std).items()
            if i in STYLE_IDX
        }
    img = content.clone().requires_grad_(True)
    opt = torch.optim.Adam([img], lr=0.02)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        f = plain_features(net, img, mean, std)
        loss = F.mse_loss(f[CONTENT_IDX], c_target)
        loss = loss + style_weight * sum(
            F.mse_loss(plain_gram(f[i]), s_targets[i]) for i in STYLE_IDX
        )
        tv = (img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (
            img[..., :, 1:] - img[..., :, :-1]
        ).abs().mean()
        (loss + tv_weight * tv).backward()
        opt.step()
        with torch.no_grad():
            img.clamp_(0, 1)
    synchronize(device)
    return time.perf_counter() - t0, float(loss.detach())


def gpulab_gatys(images, device, size, steps, precision, cuda_graph=True):
    vgg = load_vgg19(None, seed=0)[0]
    cfg = StylizeConfig(size=size, steps=steps, cuda_graph=cuda_graph)
    result = stylize(*images, vgg, cfg, device, resolve_precision(precision, device))
    last = result.history[-1]
    return result.timing["seconds_per_image"], last["content"] + 5.0 * STYLE_BASE * last["style"]


def plain_feed_forward(device, size, batch, steps):
    """Images/s of a plain training loop of the same network and losses."""
    torch.backends.fp32_precision = "none"
    net = plain_vgg(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    style = prepare_images(
        generated_painting(size * 2), generated_painting(size * 2), size, device
    )[1]
    with torch.no_grad():
        s_targets = {
            i: plain_gram(f)
            for i, f in plain_features(net, style, mean, std).items()
            if i in STYLE_IDX
        }
    crops = bundled_crops(batch * 4, size)
    data = torch.stack([torchvision.transforms.functional.to_tensor(c) for c in crops])
    model = TransformerNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x):
        opt.zero_grad()
        out = model(x)
        f, fc = plain_features(net, out, mean, std), plain_features(net, x, mean, std)
        loss = F.mse_loss(f[CONTENT_IDX], fc[CONTENT_IDX].detach())
        loss = loss + 5.0 * STYLE_BASE * sum(
            F.mse_loss(plain_gram(f[i]), s_targets[i].expand(len(x), -1, -1)) for i in STYLE_IDX
        )
        loss.backward()
        opt.step()

    step(data[:batch].to(device))  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        j = (i % 4) * batch
        step(data[j : j + batch].to(device))
    synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def gpulab_feed_forward(device, size, batch, steps, precision, out):
    cfg = get_workload("style").config(
        "default",
        {
            "size": str(size),
            "batch_size": str(batch),
            "count": str(batch * 4),
            "eval_every": "0",
            "epochs": str(max(1, steps // 4)),
            "warmup_steps": "1",
        },
    )
    opts = TrainOptions(
        device=device,
        precision=precision,
        out=out,
        quiet=True,
        checkpoint_every_epochs=0,
        datasheet_peak=training_peak(device),
    )
    return train("style", cfg, opts).record.timing.samples_per_s


def say(text: str) -> None:
    print(text, flush=True)


def attempt(label: str, fn, *args):
    """fn(*args), or None after one line naming the failure: one broken row must not cost the
    rows after it on a rented GPU."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported and skipped
        say(f"{label} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cuda,cpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--cpu-steps",
        type=int,
        default=10,
        help="Gatys and feed-forward steps on the CPU (per-step time is extrapolated)",
    )
    parser.add_argument("--ff-size", type=int, default=256)
    parser.add_argument("--ff-batch", type=int, default=8)
    parser.add_argument("--ff-steps", type=int, default=40)
    args = parser.parse_args()
    images = (bundled_photo("china"), generated_painting(args.size))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.devices.split(","):
            device = resolve_device(name)
            gpu = device.type == "cuda"
            steps = args.steps if gpu else args.cpu_steps
            content, style = prepare_images(*images, args.size, device)
            plain_gatys(content, style, device, 2)  # warm-up
            plain_s, plain_loss = plain_gatys(content, style, device, steps)
            row = results[name] = {
                "steps": steps,
                "plain_s": plain_s,
                "plain_final_loss": plain_loss,
            }
            say(f"{name} Gatys, {steps} steps at {args.size} px: plain loop {plain_s:.3f} s")
            variants = [("fp32", True), ("tf32", True), ("bf16", True), ("tf32", False)]
            for p, graph in variants if gpu else [("fp32", False), ("bf16", False)]:
                key = p if graph or not gpu else f"{p}_eager"
                got = attempt(
                    f"{name} Gatys gpulab {key}",
                    gpulab_gatys,
                    images,
                    device,
                    args.size,
                    steps,
                    p,
                    graph,
                )
                if got is None:
                    continue
                s, loss = got
                row[f"gpulab_{key}_s"], row[f"gpulab_{key}_final_loss"] = s, loss
                row[f"plain_over_gpulab_{key}"] = plain_s / s
                say(
                    f"{name} Gatys gpulab {key}: {s:.3f} s, {plain_s / s:.2f}x the plain loop, "
                    f"final loss {loss:.6g} (plain {plain_loss:.6g})"
                )
            if "gpulab_fp32_s" in row:
                row["seconds_per_image_at_300_steps"] = row["gpulab_fp32_s"] / steps * 300
            ff = (args.ff_size, args.ff_batch, args.ff_steps if gpu else args.cpu_steps)
            row["ff_plain_images_per_s"] = plain_feed_forward(device, *ff)
            say(f"{name} feed-forward plain loop: {row['ff_plain_images_per_s']:.1f} img/s")
            for p in ("fp32", "tf32", "bf16") if gpu else ("fp32",):
                rate = attempt(
                    f"{name} feed-forward gpulab {p}", gpulab_feed_forward, name, *ff, p, tmp
                )
                if rate is None:
                    continue
                row[f"ff_gpulab_{p}_images_per_s"] = rate
                say(
                    f"{name} feed-forward gpulab {p}: {rate:.1f} img/s, "
                    f"{rate / row['ff_plain_images_per_s']:.2f}x the plain loop"
                )
    summary = {
        "benchmark": "style_speed",
        "method_version": METHOD_VERSION,
        "size": args.size,
        "results": results,
        "study_gpu_speedup": STUDY["style"].gpu_speedup,
    }
    cpu, gpu = results.get("cpu", {}), results.get("cuda", {})
    study = STUDY["style"].gpu_speedup
    # the same arithmetic on both (fp32), and each device's default (CPU fp32, GPU bf16 graphed)
    for label, gpu_key in (("fp32 on both", "gpulab_fp32_s"), ("defaults", "gpulab_bf16_s")):
        if "gpulab_fp32_s" in cpu and gpu_key in gpu:
            ratio = (cpu["gpulab_fp32_s"] / cpu["steps"]) / (gpu[gpu_key] / gpu["steps"])
            summary[f"cpu_over_gpu_seconds_per_image_{label.split()[0]}"] = ratio
            say(
                f"seconds per image, CPU / GPU, {label}: {ratio:.1f}x (study reported {study:.0f}x)"
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
