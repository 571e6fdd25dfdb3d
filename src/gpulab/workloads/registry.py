"""Workload name -> its Workload object. The CLI, bench and web look workloads up here."""

import importlib

from gpulab.runtime.errors import GpulabError
from gpulab.workloads.base import Workload

# name -> "module:attribute", imported on first use so that `gpulab --help` stays fast.
_WORKLOADS = {
    "stocks": "gpulab.workloads.stocks.workload:WORKLOAD",
    "style": "gpulab.workloads.style.workload:WORKLOAD",
    "caption": "gpulab.workloads.caption.workload:WORKLOAD",
    "digits": "gpulab.workloads.digits.workload:WORKLOAD",
    "cnn": "gpulab.workloads.cnn.workload:WORKLOAD",
}


def workload_names() -> list[str]:
    return list(_WORKLOADS)


def get_workload(name: str) -> Workload:
    if name not in _WORKLOADS:
        raise GpulabError(f"unknown workload {name!r}; choose one of {', '.join(_WORKLOADS)}")
    module, attr = _WORKLOADS[name].split(":")
    return getattr(importlib.import_module(module), attr)
