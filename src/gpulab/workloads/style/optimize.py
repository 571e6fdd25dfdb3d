"""Style transfer by optimising the pixels of one image (Gatys, Ecker and Bethge, 2016).

The two sliders of the study's platform are the user-facing scale:

    loss = content_weight * CONTENT_BASE * L_content          (content_weight slider: 0..2)
         + style_weight * STYLE_BASE * sum_l L_style(l)        (style_weight slider:   0..10)
         + tv_weight * L_tv

L_content is the mean squared difference of relu4_2 activations; L_style(l) the mean squared
difference of Gram matrices (divided by C*H*W) at relu1_1..relu5_1; L_tv the mean absolute
difference of neighbouring pixels. With STYLE_BASE = 1e5, style slider 10 weighs style like the
common PyTorch tutorial's 1e6 against content 1.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gpulab.data.images import resize_longer_side, save_image, to_tensor
from gpulab.runtime.device import capture_graph, on_side_stream, pick_fastest_kernels, synchronize
from gpulab.runtime.errors import GpulabError, first_line
from gpulab.runtime.precision import Precision
from gpulab.runtime.timing import Timeline, summarize_steps
from gpulab.workloads.style.model import CONTENT_LAYER, STYLE_LAYERS, VGGFeatures, gram

CONTENT_BASE = 1.0
STYLE_BASE = 1e5
MIN_SIZE, MAX_SIZE = 64, 4096


@dataclass
class StylizeConfig:
    content_weight: float = 1.0  # slider, 0..2
    style_weight: float = 5.0  # slider, 0..10
    size: int = 512  # longer side of the output, pixels
    steps: int = 300  # optimiser steps (L-BFGS: loss evaluations)
    optimizer: str = "adam"  # adam | lbfgs
    init: str = "content"  # content | noise
    tv_weight: float = 1e-3
    lr: float = 0.02  # Adam, on pixels in [0, 1]
    seed: int = 0
    save_every: int = 0  # write an intermediate image every K steps; 0: never
    cuda_graph: bool = True  # Adam on CUDA: capture the step in a CUDA graph after a few steps

    def validate(self) -> None:
        checks = [
            (0 <= self.content_weight <= 2, "--content-weight must lie in 0..2"),
            (0 <= self.style_weight <= 10, "--style-weight must lie in 0..10"),
            (
                self.content_weight > 0 or self.style_weight > 0,
                "content and style weights are both 0: nothing to optimise; raise one of them",
            ),
            (
                MIN_SIZE <= self.size <= MAX_SIZE,
                f"--size must lie in {MIN_SIZE}..{MAX_SIZE} pixels",
            ),
            (self.steps >= 1, "--steps must be at least 1"),
            (self.optimizer in ("adam", "lbfgs"), "--optimizer must be adam or lbfgs"),
            (self.init in ("content", "noise"), "--init must be content or noise"),
            (self.tv_weight >= 0, "--tv-weight must be 0 or more"),
            (self.save_every >= 0, "--save-every must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise GpulabError(message)


@dataclass
class StylizeResult:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    history: list[dict] = field(default_factory=list)  # step, total, content, style, tv
    timing: dict = field(default_factory=dict)


def estimate_bytes(height: int, width: int) -> int:
    """Device memory one optimisation step needs: VGG19 activations to relu5_1 (kept for the
    backward pass), their gradients and cuDNN workspace, ~3x the float32 forward tensors."""
    per_pixel = 0
    for block, (channels, tensors) in enumerate([(64, 4), (128, 4), (256, 8), (512, 8), (512, 2)]):
        per_pixel += channels * tensors / 4**block
    return int(3 * 4 * per_pixel * height * width) + 512 * 2**20


def check_memory(height: int, width: int, device: torch.device) -> None:
    """Say before starting when the image cannot fit in the device's free memory."""
    need = estimate_bytes(height, width)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > free:
        raise GpulabError(
            f"a {width}x{height} image needs about {need / 2**30:.1f} GiB on {device}, "
            f"only {free / 2**30:.1f} GiB is free; use a smaller --size"
        )


class StyleLoss:
    """Weighted content, style and TV terms against fixed Gram targets, as device tensors."""

    def __init__(
        self,
        vgg: VGGFeatures,
        style_grams: dict[str, torch.Tensor],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        precision: Precision,
        device: torch.device,
    ):
        self.vgg, self.style_grams, self.precision, self.device = (
            vgg,
            style_grams,
            precision,
            device,
        )
        self.autocast_cache = True  # off while the step is captured in a CUDA graph
        self.w_content = content_weight * CONTENT_BASE  # slider -> loss weight
        self.w_style = style_weight * STYLE_BASE
        self.w_tv = tv_weight

    @classmethod
    def for_images(cls, vgg, content: torch.Tensor, style: torch.Tensor, cfg, precision, device):
        """Gatys: the content target is one image's features, computed once like the Grams."""
        with torch.no_grad(), precision.autocast(device):
            grams = {k: gram(v) for k, v in vgg(style).items() if k in STYLE_LAYERS}
        loss = cls(
            vgg, grams, cfg.content_weight, cfg.style_weight, cfg.tv_weight, precision, device
        )
        loss.content_target = loss.content_features(content)
        return loss

    def content_features(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.precision.autocast(self.device):
            return self.vgg(image)[CONTENT_LAYER].float()

    def terms(self, image: torch.Tensor, content_target: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.precision.autocast(self.device, cache=self.autocast_cache):
            feats = self.vgg(image)
        content = F.mse_loss(feats[CONTENT_LAYER].float(), content_target)
        style = sum(
            F.mse_loss(g, self.style_grams[k].expand_as(g))
            for k in STYLE_LAYERS
            for g in [gram(feats[k])]
        )
        tv = (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (
            image[..., :, 1:] - image[..., :, :-1]
        ).abs().mean()
        total = self.w_content * content + self.w_style * style + self.w_tv * tv
        return {"total": total, "content": content, "style": style, "tv": tv}

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.terms(image, self.content_target)


def prepare_images(content_img, style_img, size: int, device: torch.device):
    """Content at `size` on its longer side (aspect kept); style likewise, whatever its shape."""
    content = to_tensor(resize_longer_side(content_img, size))
    style = to_tensor(resize_longer_side(style_img, size))
    fmt = torch.channels_last
    return content.to(device, memory_format=fmt), style.to(device, memory_format=fmt)


def stylize(
    content_img,
    style_img,
    vgg: VGGFeatures,
    cfg: StylizeConfig,
    device: torch.device,
    precision: Precision,
    progress=None,
    save_dir: Path | None = None,
    energy=None,
) -> StylizeResult:
    """Optimise an image's pixels for `cfg.steps` steps; losses are read back only every few.
    An `energy` meter (runtime/energy.py) measures the timed optimisation."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    content, style = prepare_images(content_img, style_img, cfg.size, device)
    check_memory(content.shape[2], content.shape[3], device)
    vgg = vgg.to(device, memory_format=torch.channels_last)
    loss_fn = StyleLoss.for_images(vgg, content, style, cfg, precision, device)
    start = content.clone() if cfg.init == "content" else torch.rand_like(content)
    # L-BFGS flattens gradients with .view(): it needs the standard layout
    fmt = torch.contiguous_format if cfg.optimizer == "lbfgs" else torch.channels_last
    image = start.contiguous(memory_format=fmt).requires_grad_(True)
    run = _run_lbfgs if cfg.optimizer == "lbfgs" else _run_adam
    pick_fastest_kernels(device)  # one shape for every step
    timeline = Timeline(device)
    synchronize(device)
    t0 = time.perf_counter()
    if energy is not None:
        energy.start()
    losses, graphed = run(image, loss_fn, cfg, timeline, progress, save_dir)
    if energy is not None:
        energy.close()  # synchronizes before reading its counters
    synchronize(device)
    wall_s = time.perf_counter() - t0
    seconds = timeline.seconds()
    step_s = [b - a for a, b in zip(seconds, seconds[1:])]
    history = [{"step": i + 1, **{k: float(v) for k, v in d.items()}} for i, d in enumerate(losses)]
    stats = summarize_steps(step_s[min(5, len(step_s) - 1) :] if step_s else [], 1)
    timing = {
        "seconds_per_image": wall_s,
        "seconds_per_step_median": stats.step_median_s,
        "seconds_per_step_iqr": stats.step_iqr_s,
        "steps": len(step_s),
        "clock": "cuda events" if device.type == "cuda" else "host perf_counter",
        "cuda_graph": graphed,
    }
    return StylizeResult(image.detach().clamp(0, 1).cpu(), history, timing)


def _record(losses: list, terms: dict) -> None:
    losses.append({k: v.detach() for k, v in terms.items()})


def _report(step: int, cfg: StylizeConfig, losses: list, image, progress, save_dir) -> None:
    if progress and (step % 10 == 0 or step == cfg.steps):
        progress(step, {k: float(v) for k, v in losses[-1].items()})  # one sync every 10 steps
    if save_dir is not None and cfg.save_every and step % cfg.save_every == 0:
        save_image(image.detach().clamp(0, 1), save_dir / f"step_{step:05d}.png")


def _run_adam(image, loss_fn, cfg, timeline, progress, save_dir):
    """Adam on the pixels. On CUDA the step is captured once in a CUDA graph after a few eager
    steps and replayed: one launch per step instead of hundreds, so the GPU, not the Python and
    autograd overhead of ~40 VGG layers forward and back, sets the pace."""
    graphed = image.is_cuda and cfg.cuda_graph and not loss_fn.precision.uses_grad_scaler
    opt = torch.optim.Adam([image], lr=cfg.lr, capturable=graphed, fused=graphed or None)

    def step() -> dict[str, torch.Tensor]:
        opt.zero_grad(set_to_none=True)
        terms = loss_fn(image)
        terms["total"].backward()
        opt.step()
        with torch.no_grad():
            image.clamp_(0, 1)
        return terms

    losses = []
    timeline.mark()
    replay, static = None, None
    for k in range(1, cfg.steps + 1):
        if replay is not None:
            replay()
            terms = {name: t.clone() for name, t in static.items()}  # the graph reuses them
        elif graphed and k <= GRAPH_WARMUP_STEPS:
            terms = on_side_stream(step)  # capture wants its warm-up off the default stream
        else:
            terms = step()
        timeline.mark()
        _record(losses, terms)
        _report(k, cfg, losses, image, progress, save_dir)
        if graphed and k == GRAPH_WARMUP_STEPS < cfg.steps:
            loss_fn.autocast_cache = False
            try:
                graph, static = capture_graph(step, mode="thread_local")  # web jobs are threads
                replay = graph.replay
            except RuntimeError as e:  # run on eagerly rather than lose the image
                print(f"gpulab: CUDA graph capture failed ({first_line(e)}); eager steps")
                loss_fn.autocast_cache = True
    return losses, replay is not None


GRAPH_WARMUP_STEPS = 3  # real steps run eagerly before the capture


def _run_lbfgs(image, loss_fn, cfg, timeline, progress, save_dir):
    """L-BFGS counted in loss evaluations, so --steps is the same work as for Adam."""
    opt = torch.optim.LBFGS(
        [image],
        lr=1.0,
        max_iter=cfg.steps,
        max_eval=cfg.steps,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    losses = []
    timeline.mark()

    def closure():
        with torch.no_grad():
            image.clamp_(0, 1)
        opt.zero_grad(set_to_none=True)
        terms = loss_fn(image)
        terms["total"].backward()
        timeline.mark()
        _record(losses, terms)
        _report(len(losses), cfg, losses, image, progress, save_dir)
        return terms["total"]

    opt.step(closure)
    with torch.no_grad():
        image.clamp_(0, 1)
    if not all(math.isfinite(float(d["total"])) for d in losses[-1:]):
        raise GpulabError(
            "the optimisation diverged (non-finite loss); lower the weights or use adam"
        )
    return losses, False
