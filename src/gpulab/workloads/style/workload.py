"""The style workload: `gpulab stylize` (optimisation), `gpulab train style` (feed-forward
network) and `gpulab predict style` (applying a trained network)."""

import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from gpulab.data.images import (
    check_output,
    open_image,
    resize_longer_side,
    save_image,
    side_by_side,
    to_pil,
    to_tensor,
)
from gpulab.data.samples import bundled_photo, generated_painting
from gpulab.runtime import records
from gpulab.runtime.checkpoint import load_weights
from gpulab.runtime.device import resolve_device, set_cpu_threads, synchronize
from gpulab.runtime.energy import EnergyMeter
from gpulab.runtime.environment import describe_environment
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import ensure_writable_dir
from gpulab.runtime.precision import Precision, bf16_where_supported, resolve_precision
from gpulab.workloads.base import Workload, load_trained
from gpulab.workloads.style import config
from gpulab.workloads.style.data import StyleData, build_style_data, image_files
from gpulab.workloads.style.model import TransformerNet, stylize_any_size
from gpulab.workloads.style.optimize import StyleLoss, StylizeConfig, stylize
from gpulab.workloads.style.weights import load_vgg19


def load_inputs(content: Path | None, style: Path | None):
    """The user's images, or the embedded ones: scikit-learn's china.jpg and a generated painting."""
    content_img = open_image(content) if content else bundled_photo("china")
    style_img = open_image(style) if style else generated_painting(512)
    names = (
        str(content) if content else "bundled:china.jpg",
        str(style) if style else "generated:painting",
    )
    return content_img, style_img, names


def run_stylize(
    content: Path | None,
    style: Path | None,
    output: Path | None,
    cfg: StylizeConfig,
    device: str = "auto",
    precision: str = "fp32",
    vgg_weights: Path | None = None,
    out: Path = Path("runs"),
    force: bool = False,
    threads: int | None = None,
    progress=None,
) -> tuple[Path, records.RunRecord]:
    """Check everything that can be checked before work, stylize, write output and record."""
    started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cfg.validate()
    if output is not None:
        check_output(output, force)
    dev = resolve_device(device)
    policy = resolve_precision(precision, dev)
    set_cpu_threads(threads)
    content_img, style_img, names = load_inputs(content, style)
    vgg, pretrained, weights_from = load_vgg19(vgg_weights, cfg.seed)
    run_dir = records.new_run_dir(out, "style", str(dev))
    energy = EnergyMeter.for_device(dev)
    try:
        save_dir = run_dir if cfg.save_every else None
        result = stylize(content_img, style_img, vgg, cfg, dev, policy, progress, save_dir, energy)
    except BaseException:
        records.discard_run_dir(run_dir)
        raise
    finally:
        energy.close()
    _save_images(result.image, content_img, style_img, run_dir, output)
    final = result.history[-1]
    record = records.RunRecord(
        workload="style",
        mode=records.OPTIMIZE,
        status="complete",
        created_utc=started_utc,
        command=["gpulab", *sys.argv[1:]],
        config=asdict(cfg),
        inputs=records.Inputs(
            content=names[0], style=names[1], output=str(output) if output else None
        ),
        options=records.Options(device=str(dev), precision=policy.name),
        environment=records.Environment(**describe_environment(dev)),
        pretrained=pretrained,
        vgg_weights=weights_from,
        timing=records.StylizeTiming(**result.timing),
        energy=energy.result(samples=1),  # the sample is the image
        metrics={f"final_{k}": v for k, v in final.items() if k != "step"},
        key_metric=records.KeyMetric(
            name="final_total", value=final["total"], higher_is_better=False
        ),
        history=result.history,
        artifacts=sorted(p.name for p in run_dir.iterdir()),
    )
    records.write_record(run_dir, record)
    return run_dir, record


def _save_images(image, content_img, style_img, run_dir: Path, output: Path | None) -> None:
    """The result, a content | style | result strip, and the user's copy when asked for."""
    save_image(image, run_dir / "stylized.png")
    styled = to_pil(image)
    strip = side_by_side([content_img, style_img, styled], styled.height)
    save_image(strip, run_dir / "comparison.png")
    if output is not None:
        save_image(image, output)


# -- feed-forward mode (Johnson et al.): `gpulab train style`, `gpulab predict style` -----------


class StyleWorkload(Workload):
    name = "style"
    summary = "feed-forward style network (Johnson et al.) trained against VGG19 losses"
    config_cls = config.StyleConfig
    can_predict = True
    key_metric = "eval_total"
    higher_is_better = False
    graph_safe = True  # fixed-size crops, whole batches, no host reads in the step

    def presets(self):
        return {"default": config.default(), "debug": config.debug()}

    def default_precision(self, device: torch.device) -> str:
        """bf16 autocast on GPUs that have it (Grams stay float32); fp32 elsewhere."""
        return bf16_where_supported(device)

    def build_data(self, cfg, device, dist) -> StyleData:
        vgg, pretrained, _ = load_vgg19(
            Path(cfg.vgg_weights) if cfg.vgg_weights else None, cfg.seed
        )
        data = build_style_data(cfg, vgg, device, dist)
        # The training loop applies the run's autocast around loss(); this adds none of its own.
        data.loss_fn = StyleLoss(
            data.vgg,
            data.style_grams,
            cfg.content_weight,
            cfg.style_weight,
            cfg.tv_weight,
            Precision("fp32", None, False),
            device,
        )
        data.pretrained = pretrained
        return data

    def build_model(self, cfg, data) -> TransformerNet:
        return TransformerNet(cfg.width, cfg.residual_blocks)

    def build_optimizer(self, cfg, model, capturable):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, capturable=capturable, fused=True)

    def loss(self, model, batch, data: StyleData):
        (content,) = batch
        loss_fn = data.loss_fn
        return loss_fn.terms(model(content), loss_fn.content_features(content))["total"]

    def evaluate(self, model, data: StyleData):
        content, loss_fn = data.eval_batch, data.loss_fn
        terms = loss_fn.terms(model(content), loss_fn.content_features(content))
        return {f"eval_{k}": v for k, v in terms.items() if k != "tv"}

    def pretrained(self, data: StyleData) -> bool:
        return data.pretrained

    def finish(self, model, data: StyleData, run_dir: Path, history: list) -> dict:
        device = data.eval_batch.device
        model.eval()
        with torch.no_grad():
            sample = to_tensor(resize_longer_side(data.sample, 2 * data.eval_batch.shape[-1]))
            save_image(stylize_any_size(model, sample.to(device)), run_dir / "sample.png")
        last = history[-1]
        return {
            **{k: v for k, v in last.items() if k.startswith("eval_")},
            "inference_images_per_s": inference_rate(model, data.eval_batch),
            "style": data.style_name,
        }


@torch.no_grad()
def inference_rate(model: TransformerNet, batch: torch.Tensor, repeats: int = 5) -> float:
    """Images/s of the trained network at the training size (synchronized, after a warm-up)."""
    model.eval()
    model(batch)
    synchronize(batch.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    synchronize(batch.device)
    return repeats * len(batch) / (time.perf_counter() - t0)


def load_style_model(run_dir: Path) -> TransformerNet:
    if records.read_record(run_dir).mode == records.OPTIMIZE:
        raise GpulabError(
            f"{run_dir} is a `gpulab stylize` result, not a trained style network; "
            "pass a `gpulab train style` run"
        )
    ck, cfg = load_trained(run_dir, WORKLOAD)
    model = TransformerNet(cfg.width, cfg.residual_blocks)
    load_weights(model, ck["model"], run_dir)
    return model.eval()


def apply_style_model(
    run_dir: Path, source: Path, output: Path, device: str = "auto", force: bool = False
) -> tuple[int, float]:
    """Stylize one image (file to file) or every image of a folder (folder to folder).

    Returns (images, images per second of the forward passes)."""
    model = load_style_model(run_dir)
    folder = Path(source).is_dir()
    pairs = (
        [(f, Path(output) / f"{f.stem}.png") for f in image_files(source, "CONTENT")]
        if folder
        else [(Path(source), Path(output))]
    )
    if folder:
        ensure_writable_dir(Path(output))
    for _, dst in pairs:
        check_output(dst, force)
    dev = resolve_device(device)
    model = model.to(dev)
    seconds = 0.0
    with torch.no_grad():
        for src, dst in pairs:
            image = to_tensor(open_image(src)).to(dev)
            synchronize(dev)
            t0 = time.perf_counter()
            result = stylize_any_size(model, image)
            synchronize(dev)
            seconds += time.perf_counter() - t0
            save_image(result, dst)
    return len(pairs), len(pairs) / seconds if seconds else 0.0


WORKLOAD = StyleWorkload()
