"""The one place that answers: which device, precision, rank, seed, and how to time."""

from gpulab.runtime.device import DeviceInfo, list_devices, resolve_device, synchronize
from gpulab.runtime.distributed import (
    DistInfo,
    cleanup_distributed,
    dist_info,
    init_distributed,
    print0,
    seed_everything,
)
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.precision import PRECISIONS, Precision, resolve_precision

__all__ = [
    "PRECISIONS",
    "DeviceInfo",
    "DistInfo",
    "GpulabError",
    "Precision",
    "cleanup_distributed",
    "dist_info",
    "init_distributed",
    "list_devices",
    "print0",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
    "synchronize",
]
