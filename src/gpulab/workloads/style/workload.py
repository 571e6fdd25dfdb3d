"""`gpulab stylize`: inputs checked first, then the optimisation, the output and a run record."""

import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from gpulab.data.images import check_output, open_image, save_image
from gpulab.data.samples import bundled_photo, generated_painting
from gpulab.runtime import records
from gpulab.runtime.device import resolve_device, set_cpu_threads
from gpulab.runtime.environment import describe_environment
from gpulab.runtime.precision import resolve_precision
from gpulab.workloads.style.optimize import StylizeConfig, stylize
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
) -> tuple[Path, dict]:
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
    try:
        result = stylize(
            content_img,
            style_img,
            vgg,
            cfg,
            dev,
            policy,
            progress,
            save_dir=run_dir if cfg.save_every else None,
        )
    except BaseException:
        records.discard_run_dir(run_dir)
        raise
    save_image(result.image, run_dir / "stylized.png")
    if output is not None:
        save_image(result.image, output)
    final = result.history[-1]
    record = {
        "workload": "style",
        "mode": "optimize",
        "status": "complete",
        "created_utc": started_utc,
        "command": ["gpulab", *sys.argv[1:]],
        "config": asdict(cfg),
        "inputs": {
            "content": names[0],
            "style": names[1],
            "output": str(output) if output else None,
        },
        "options": {"device": str(dev), "precision": policy.name},
        "environment": describe_environment(dev),
        "pretrained": pretrained,
        "vgg_weights": weights_from,
        "timing": result.timing,
        "metrics": {f"final_{k}": v for k, v in final.items() if k != "step"},
        "key_metric": {"name": "final_total", "value": final["total"], "higher_is_better": False},
        "history": result.history,
        "artifacts": sorted(p.name for p in run_dir.iterdir()),
    }
    records.write_record(run_dir, record)
    return run_dir, record
