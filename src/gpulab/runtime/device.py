"""Which device to run on: `auto` picks cuda, then mps, then cpu."""

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gpulab.runtime.errors import GpulabError


@dataclass(frozen=True)
class DeviceInfo:
    """One device gpulab can use, as `gpulab devices` lists it."""

    name: str  # what --device takes: cpu, cuda:0, mps
    kind: str  # cpu | cuda | mps
    model: str  # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    memory_bytes: int


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# cgroup v2, then v1: a container's CPU limit as quota and period (microseconds)
CPU_QUOTA_FILES = (
    ("/sys/fs/cgroup/cpu.max",),
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def usable_cores() -> int:
    """Logical CPUs this process may use: those of its CPU set (affinity) where the OS tells,
    else the machine's, and no more than a container's CPU limit (cgroup quota)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cpu_quota() -> float | None:
    """CPUs a cgroup's quota allows (e.g. 2.5), or None where there is no limit."""
    for files in CPU_QUOTA_FILES:
        try:
            words = " ".join(Path(f).read_text() for f in files).split()
        except OSError:
            continue
        if len(words) == 2 and words[0] not in ("max", "-1"):
            try:
                quota, period = int(words[0]), int(words[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    return None


def default_cpu_threads(cap: int | None = None) -> int:
    """Threads for CPU compute: OMP_NUM_THREADS if set, else one per physical core, no more
    than the CPUs this process may use (`usable_cores`) and at most `cap` (workloads with very
    short steps pass `Workload.max_cpu_threads`).

    One thread per logical CPU oversubscribes SMT siblings. A virtual machine may report its
    vCPUs as cores: on one 16-vCPU machine the stocks step took 102 ms with 16 threads and
    4.3 ms with 8, so pass --threads there.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    import psutil

    cores = min(psutil.cpu_count(logical=False) or os.cpu_count() or 1, usable_cores())
    return min(cores, cap) if cap else cores


def set_cpu_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (`None`: the default above) and return the number in use."""
    torch.set_num_threads(threads or default_cpu_threads())
    return torch.get_num_threads()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def list_devices() -> list[DeviceInfo]:
    """Every device torch can use here; the CPU is always first."""
    import psutil

    devices = [DeviceInfo("cpu", "cpu", cpu_model(), psutil.virtual_memory().total)]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(DeviceInfo(f"cuda:{i}", "cuda", props.name, props.total_memory))
    if _mps_available():
        devices.append(DeviceInfo("mps", "mps", "Apple GPU (MPS)", psutil.virtual_memory().total))
    return devices


def _available_names() -> str:
    return ", ".join(d.name for d in list_devices())


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn `auto`, `cpu`, `cuda`, `cuda:N` or `mps` into a torch.device that exists here; a
    CUDA device becomes the process's current one."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise GpulabError(
            f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps "
            f"(available here: {_available_names()})"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GpulabError(
                f"--device {spec}: no CUDA GPU is visible here; available: {_available_names()}"
            )
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise GpulabError(
                f"--device {spec}: there are only {torch.cuda.device_count()} CUDA devices; "
                f"available: {_available_names()}"
            )
        # the process's current device too: streams, timing events and CUDA graph captures use
        # it, and on cuda:1 with cuda:0 current they would record and capture nothing
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if device.type == "mps" and _mps_available():
        return device
    raise GpulabError(f"--device {spec} is not available here; available: {_available_names()}")


def nvml_handle(nvml, device: torch.device):
    """NVML's handle of a CUDA device, by its UUID: CUDA and NVML number GPUs differently
    (CUDA_VISIBLE_DEVICES, fastest-first order)."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is None:
        return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    text = str(uuid)  # torch: the bare UUID, without NVML's prefix
    return nvml.nvmlDeviceGetHandleByUUID(text if text[:4] in ("GPU-", "MIG-") else f"GPU-{text}")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a host clock read afterwards is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def pick_fastest_kernels(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the
    fastest (cudnn.benchmark): a gain where every step has the same shapes, a search per step
    where they keep changing."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def on_side_stream(fn, *args):
    """fn(*args) on a fresh CUDA stream, ordered after the work queued so far and before what is
    queued next: where the warm-up before a CUDA graph capture must run."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    return out


def capture_graph(fn, *args, mode: str = "global"):
    """(graph, outputs): fn(*args) captured in a CUDA graph. Capturing runs nothing; each
    graph.replay() runs it again on the same tensors and rewrites the same outputs.

    mode "global" refuses CUDA calls from any thread during the capture; "thread_local" only
    from this one, for code that shares the GPU with other threads (the web server's jobs).
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode=mode):
        out = fn(*args)
    return graph, out
