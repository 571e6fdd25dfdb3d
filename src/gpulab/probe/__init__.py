"""`gpulab probe`: the machine's limits along the three tenets, next to what the hardware should do.

compute (dense matrix multiply per dtype), bandwidth (device memory, host<->device, GPU<->GPU)
and file access (cold/warm/random/concurrent reads, fsynced writes), plus an inventory.
"""

import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from gpulab.probe.bandwidth import SWEEP_FULL, SWEEP_QUICK, GiB, MiB, probe_bandwidth
from gpulab.probe.compute import probe_compute
from gpulab.probe.inventory import inventory
from gpulab.probe.peaks import lookup_peak
from gpulab.probe.report import ceilings, verdict
from gpulab.probe.storage import probe_storage
from gpulab.runtime.device import resolve_device, set_cpu_threads, usable_cores
from gpulab.runtime.errors import GpulabError

METHOD_VERSION = 2
DEFAULT_SAMPLE_BYTES = 110_000  # about one ImageNet JPEG


def default_settings(device: torch.device, quick: bool) -> dict:
    """Problem sizes: --quick stays under a minute on a 2-core CPU machine."""
    if device.type == "cpu":
        sizes = [512, 1024] if quick else [1024, 2048]
    else:
        sizes = [4096, 8192] if quick else [2048, 4096, 8192]
    return {
        "matmul_sizes": sizes,
        "samples": 3 if quick else 7,
        "copy_bytes": 256 * MiB if quick else GiB,
        "transfer_sizes": SWEEP_QUICK if quick else SWEEP_FULL,
        "storage_file_bytes": 128 * MiB if quick else GiB,
    }


class StageClock:
    """Passes each stage's name on to `progress` and keeps the seconds each one took."""

    def __init__(self, progress=None):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.stage, self.start = "inventory", time.perf_counter()

    def say(self, text: str) -> None:
        self._close()
        self.stage = text
        if self.progress:
            self.progress(text)

    def _close(self) -> None:
        now = time.perf_counter()
        self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self.start
        self.start = now

    def finish(self) -> dict[str, float]:
        self._close()
        return {k: round(v, 3) for k, v in self.seconds.items()}


def run_probe(
    device: str = "auto",
    quick: bool = False,
    directory: Path = Path("runs"),
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    threads: int | None = None,
    progress=None,
    settings: dict | None = None,
) -> dict:
    """Measure everything; storage problems are recorded, not raised (the rest still counts)."""
    dev = resolve_device(device)
    set_cpu_threads(threads)
    stages = StageClock(progress)
    say = stages.say
    settings = settings or default_settings(dev, quick)
    inv = inventory(directory)
    info = next(
        (a for a in inv["accelerators"] if a.get("index") == dev.index), {"name": inv["cpu_model"]}
    )
    peak = lookup_peak(info["name"]) if dev.type == "cuda" else None
    result = {
        "method_version": METHOD_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "device": str(dev),
        "device_name": info["name"],
        "threads": torch.get_num_threads(),
        "sample_bytes": sample_bytes,
        "settings": settings,
        "peak": None
        if peak is None
        else {
            "model": peak.model,
            "source": peak.source,
            "tflops": peak.tflops,
            "memory_gbps": peak.memory_gbps,
        },
        "inventory": inv,
    }
    result["compute"] = probe_compute(dev, settings["matmul_sizes"], settings["samples"], peak, say)
    result["bandwidth"] = probe_bandwidth(
        dev,
        info,
        peak.memory_gbps if peak else None,
        settings["copy_bytes"],
        settings["transfer_sizes"],
        settings["samples"],
        say,
    )
    try:
        result["storage"] = probe_storage(
            Path(directory), settings["storage_file_bytes"], usable_cores(), say
        )
    except GpulabError as e:
        result["storage"] = {"error": str(e)}
    result["stage_seconds"] = stages.finish()
    result["ceilings"] = ceilings(result)
    result["verdict"] = verdict(result)
    return result
