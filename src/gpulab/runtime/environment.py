"""A description of the software and hardware a run used, for its record."""

import os
import platform
import subprocess
from pathlib import Path

import torch

import gpulab
from gpulab.runtime.device import cpu_model, nvml_handle, usable_cores


def git_sha() -> str | None:
    """The commit of the gpulab checkout in use, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def nvml_device(device: torch.device) -> dict:
    """Driver version, clocks, power limit and PCIe link from NVML; {} when NVML is absent."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # no driver, no library: NVML facts are simply unknown
        return {"nvml": f"not available ({type(e).__name__})"}
    try:
        h = nvml_handle(pynvml, device)

        def read(fn, *args):
            try:
                return fn(h, *args)
            except pynvml.NVMLError:
                return None

        power_mw = read(pynvml.nvmlDeviceGetPowerManagementLimit)
        return {
            "driver_version": pynvml.nvmlSystemGetDriverVersion(),
            "sm_clock_mhz": read(pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": read(pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": read(pynvml.nvmlDeviceGetClockInfo, pynvml.NVML_CLOCK_MEM),
            "mem_clock_max_mhz": read(pynvml.nvmlDeviceGetMaxClockInfo, pynvml.NVML_CLOCK_MEM),
            "power_limit_w": power_mw / 1000 if power_mw else None,
            "pcie_gen": read(pynvml.nvmlDeviceGetCurrPcieLinkGeneration),
            "pcie_width": read(pynvml.nvmlDeviceGetCurrPcieLinkWidth),
            "pcie_gen_max": read(pynvml.nvmlDeviceGetMaxPcieLinkGeneration),
            "pcie_width_max": read(pynvml.nvmlDeviceGetMaxPcieLinkWidth),
            "nvlink_active_links": _nvlink_active_links(pynvml, h),
        }
    finally:
        pynvml.nvmlShutdown()


def _nvlink_active_links(pynvml, handle) -> int | None:
    """Active NVLink links of a GPU; None where NVML has no NVLink (PCIe-only boards)."""
    active = 0
    for link in range(18):  # NVML_NVLINK_MAX_LINKS on Hopper
        try:
            active += pynvml.nvmlDeviceGetNvLinkState(handle, link) == pynvml.NVML_FEATURE_ENABLED
        except pynvml.NVMLError:
            return active or None
    return active


def describe_device(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "index": device.index,
            "compute_capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            **nvml_device(device),
        }
    if device.type == "mps":
        return {"type": "mps", "name": "Apple GPU (MPS)"}
    return {"type": "cpu", "name": cpu_model(), "threads": torch.get_num_threads()}


def describe_environment(device: torch.device) -> dict:
    """gpulab/torch/CUDA/driver versions, git sha, device and CPU facts."""
    import psutil

    return {
        "gpulab_version": gpulab.__version__,
        "git_sha": git_sha(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_usable_cores": usable_cores(),  # this process's CPU set and container quota
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": psutil.virtual_memory().total,
        "device": describe_device(device),
    }
