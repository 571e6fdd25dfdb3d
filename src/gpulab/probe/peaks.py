"""Datasheet peaks of accelerators: dense matrix throughput per dtype and memory bandwidth.

Dense figures (without structured sparsity), as the vendors publish them. `None` means the
device has no such matrix path. Data, not logic: each row names its source.
"""

import re
from dataclasses import dataclass

from gpulab.runtime.flops import DatasheetPeak

NVIDIA = "NVIDIA datasheet"


@dataclass(frozen=True)
class DevicePeak:
    model: str
    tflops: dict[str, float | None]  # fp32 (no TF32), tf32, bf16, fp16, fp8
    memory_gbps: float
    source: str


def _peak(model, fp32, tf32, bf16, fp16, fp8, memory_gbps, source) -> DevicePeak:
    return DevicePeak(
        model,
        {"fp32": fp32, "tf32": tf32, "bf16": bf16, "fp16": fp16, "fp8": fp8},
        memory_gbps,
        source,
    )


# Name patterns are matched against torch.cuda.get_device_name(), case-insensitively, in order.
# fmt: off
_ROWS = [
    # pattern             model              fp32  tf32   bf16    fp16    fp8     GB/s    source
    (r"h100.*pcie",       "H100 PCIe",       51.0, 378.0, 756.0,  756.0,  1513.0, 2000.0, "H100 Tensor Core GPU (PCIe), 2023"),
    (r"h100(?!.*nvl)",    "H100 SXM",        67.0, 494.7, 989.4,  989.4,  1978.9, 3350.0, "H100 Tensor Core GPU (SXM5), 2023"),
    (r"h200(?!.*nvl)",    "H200 SXM",        67.0, 494.7, 989.4,  989.4,  1978.9, 4800.0, "H200 Tensor Core GPU, 2024"),
    (r"a100.*pcie.*40|a100.*40gb.*pcie",
                          "A100 PCIe 40GB",  19.5, 156.0, 312.0,  312.0,  None,   1555.0, "A100 Tensor Core GPU, 2021"),
    (r"a100.*pcie",       "A100 PCIe 80GB",  19.5, 156.0, 312.0,  312.0,  None,   1935.0, "A100 Tensor Core GPU, 2021"),
    (r"a100.*40",         "A100 SXM 40GB",   19.5, 156.0, 312.0,  312.0,  None,   1555.0, "A100 Tensor Core GPU, 2021"),
    (r"a100",             "A100 SXM 80GB",   19.5, 156.0, 312.0,  312.0,  None,   2039.0, "A100 Tensor Core GPU, 2021"),
    (r"l40s",             "L40S",            91.6, 183.0, 362.05, 362.05, 733.0,  864.0,  "L40S GPU, 2023"),
    (r"\bl4\b",           "L4",              30.3, 60.0,  121.0,  121.0,  242.5,  300.0,  "L4 Tensor Core GPU, 2023"),
    (r"v100.*pcie",       "V100 PCIe",       14.0, None,  None,   112.0,  None,   900.0,  "Tesla V100 GPU, 2020"),
    (r"v100",             "V100 SXM2",       15.7, None,  None,   125.0,  None,   900.0,  "Tesla V100 GPU, 2020"),
    (r"\bt4\b",           "T4",              8.1,  None,  None,   65.0,   None,   320.0,  "Tesla T4 GPU, 2019"),
    (r"rtx 4090",         "GeForce RTX 4090", 82.6, 82.6, 165.2,  165.2,  330.3,  1008.0,
     "Ada Lovelace GPU architecture whitepaper (FP32 accumulate), 2023"),
]
# fmt: on
PEAKS: list[tuple[str, DevicePeak]] = [
    (pattern, _peak(model, *figures, f"{NVIDIA}: {source}"))
    for pattern, model, *figures, source in _ROWS
]


def lookup_peak(device_name: str) -> DevicePeak | None:
    """The datasheet row for a device name as torch reports it; None when unknown."""
    name = device_name.lower()
    for pattern, peak in PEAKS:
        if re.search(pattern, name):
            return peak
    return None


def datasheet_peak(device_name: str) -> DatasheetPeak | None:
    """A device name's datasheet row as the plain figures the training loop takes for MFU."""
    peak = lookup_peak(device_name)
    return DatasheetPeak(dict(peak.tflops), peak.source) if peak else None


def training_peak(device: str) -> DatasheetPeak | None:
    """The datasheet peak of the device `gpulab train --device DEVICE` trains on in this
    process (under torchrun: its local rank's GPU); None off CUDA, where no table applies."""
    import torch

    from gpulab.runtime.device import resolve_device
    from gpulab.runtime.distributed import local_device

    resolved = local_device(resolve_device(device))
    if resolved.type != "cuda":
        return None
    return datasheet_peak(torch.cuda.get_device_properties(resolved).name)


def percent_of(measured: float, peak: float | None) -> float | None:
    """Measured as a percentage of peak; None when the peak is unknown."""
    return 100.0 * measured / peak if peak else None


# PCIe payload rate per lane in GB/s, after line encoding (8b/10b to gen 2, 128b/130b from gen 3,
# FLIT 242/256 at gen 6): PCI-SIG base specifications.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


def pcie_gbps(generation: int | None, width: int | None) -> float | None:
    """Theoretical one-direction PCIe rate of a link; None when gen or width is unknown."""
    if not generation or not width or generation not in PCIE_LANE_GBPS:
        return None
    return PCIE_LANE_GBPS[generation] * width
