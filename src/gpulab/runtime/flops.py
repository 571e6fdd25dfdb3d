"""Model FLOPs per sample (torch.utils.flop_counter) and model FLOP utilisation (MFU).

FLOPs are counted once, on the meta device (shapes only, no memory, no compute), for one
sample: the forward pass, and a training step as forward + backward as the counter sees them
(the backward of the first layer skips the input gradient, so a step is slightly under 3x).
MFU = achieved model FLOP/s / the device's dense peak for the precision used.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class DatasheetPeak:
    """A device's dense matrix peak per datasheet column (fp32, tf32, bf16, fp16, fp8) in
    TFLOP/s, None where the device has no such path, and where the figures come from. The peak
    tables live above the training loop; their caller hands the loop this plain copy."""

    tflops: dict[str, float | None]
    source: str


# the datasheet column a training precision's matrix multiplies run at
PEAK_COLUMN = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16"}


def count_flops(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    loss: Callable[[nn.Module, tuple], torch.Tensor],
) -> dict[str, float]:
    """{'forward': FLOPs, 'train': FLOPs} for the batch `example` (any device), per sample."""
    meta_model = copy.deepcopy(model).to("meta")
    meta_batch = tuple(t.to("meta") for t in example)
    n = example[0].shape[0]
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        loss(meta_model, meta_batch)
    with FlopCounterMode(display=False) as step:
        loss(meta_model, meta_batch).backward()
    return {"forward": fwd.get_total_flops() / n, "train": step.get_total_flops() / n}


def utilisation(
    flops_per_sample: float,
    samples_per_s: float,
    precision: str,
    datasheet_tflops: dict | None,
    measured_tflops: dict | None = None,
) -> dict:
    """Achieved TFLOP/s and MFU against the datasheet peak and, when given, a measured peak."""
    achieved = flops_per_sample * samples_per_s / 1e12
    column = PEAK_COLUMN.get(precision, precision)
    peak = (datasheet_tflops or {}).get(column)
    measured = (measured_tflops or {}).get(column)
    return {
        "train_flops_per_sample": flops_per_sample,
        "achieved_tflops": achieved,
        "peak_column": column,
        "datasheet_peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "measured_peak_tflops": measured,
        "mfu_of_measured": achieved / measured if measured else None,
    }


def measured_peaks(probe_json, device_name: str) -> dict[str, float]:
    """Best checked matmul TFLOP/s per dtype from a `gpulab probe --json` file of this device."""
    import json
    from pathlib import Path

    from gpulab.runtime.errors import GpulabError

    path = Path(probe_json)
    try:
        doc = json.loads(path.read_text())
        results = doc["compute"]["results"]
        probed = doc.get("device_name")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GpulabError(
            f"--probe {path} is not a `gpulab probe --json` result ({e}); run gpulab probe"
        ) from None
    if probed != device_name:
        raise GpulabError(
            f"--probe {path} measured {probed!r}, not this run's {device_name!r}; "
            "probe this machine with `gpulab probe --json FILE`"
        )
    best: dict[str, float] = {}
    for r in results:
        if r.get("check_passed") and r.get("tflops_best"):
            best[r["dtype"]] = max(best.get(r["dtype"], 0.0), float(r["tflops_best"]))
    return best
