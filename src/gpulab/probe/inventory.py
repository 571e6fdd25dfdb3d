"""What the machine is: CPU, memory, NUMA nodes, accelerators (with NVML facts), the test folder."""

import shutil
from pathlib import Path

import torch

from gpulab.runtime.environment import describe_device, describe_environment


def numa_nodes() -> int | None:
    """NUMA nodes the kernel reports; None where /sys does not say."""
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    return len(nodes) or None


def accelerators() -> list[dict]:
    """Every accelerator torch sees: CUDA (or ROCm, which torch also calls cuda) and MPS."""
    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            info = describe_device(torch.device("cuda", i))
            info["platform"] = "rocm" if torch.version.hip else "cuda"
            found.append(info)
    mps = getattr(torch.backends, "mps", None)
    if mps and mps.is_available():
        found.append(describe_device(torch.device("mps")))
    return found


def folder_facts(directory: Path) -> dict:
    """Filesystem and free space of the folder the storage test uses."""
    from gpulab.probe.storage import filesystem_of

    directory = Path(directory)
    if not directory.is_dir():
        return {"path": str(directory), "exists": False}
    usage = shutil.disk_usage(directory)
    return {
        "path": str(directory.resolve()),
        "exists": True,
        "filesystem": filesystem_of(directory),
        "free_bytes": usage.free,
        "total_bytes": usage.total,
    }


def inventory(directory: Path) -> dict:
    env = describe_environment(torch.device("cpu"))
    env.pop("device")
    return {
        **env,
        "numa_nodes": numa_nodes(),
        "rocm_version": torch.version.hip,
        "accelerators": accelerators(),
        "dir": folder_facts(directory),
    }
