"""Where each shared job runs: cores and threads on the CPU, GPU, MPS clients or MIG instances."""

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gpulab.runtime.device import usable_cores
from gpulab.runtime.errors import GpulabError

MODES = ("timeslice", "mps", "partition")
MPS_CONTROL = "nvidia-cuda-mps-control"


@dataclass(frozen=True)
class Placement:
    """One job's share of the device while the jobs run together."""

    cpus: tuple[int, ...] | None = None  # a CPU partition's cores (the child's affinity)
    threads: int | None = None  # torch CPU threads (--threads)
    cuda_visible_devices: str | None = None  # a MIG instance's UUID
    mps_threads_pct: int | None = None
    memory_bytes: int | None = None  # a MIG instance's own memory; None: the device's, shared

    def as_dict(self) -> dict:
        cpus = list(self.cpus) if self.cpus is not None else None
        return {
            "cpus": cpus, "threads": self.threads,
            "cuda_visible_devices": self.cuda_visible_devices,
            "mps_threads_pct": self.mps_threads_pct, "memory_bytes": self.memory_bytes,
        }  # fmt: skip

    def env(self) -> dict[str, str]:
        out = {}
        if self.cuda_visible_devices is not None:
            out["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        if self.mps_threads_pct is not None:
            out["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(self.mps_threads_pct)
        return out


def check_mode(mode: str, device_type: str) -> None:
    if mode not in MODES:
        raise GpulabError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    if device_type == "cpu" and mode == "mps":
        raise GpulabError("--mode mps is a CUDA mode; on --device cpu use timeslice or partition")
    if device_type not in ("cpu", "cuda"):
        raise GpulabError(f"gpulab share runs on cpu or cuda, not {device_type}")


def usable_cpu_list() -> list[int]:
    """This process's allowed cores, no more than a container's quota allows."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cores[: usable_cores()] if cores else list(range(usable_cores()))


def cpu_placements(mode: str, n_jobs: int) -> list[Placement]:
    """timeslice: all cores shared, threads split so the machine is not oversubscribed;
    partition: disjoint, contiguous core sets, one thread per core."""
    cores = usable_cpu_list()
    per_job = max(1, len(cores) // n_jobs)
    if mode == "timeslice":
        return [Placement(threads=per_job) for _ in range(n_jobs)]
    if n_jobs > len(cores):
        raise GpulabError(
            f"--mode partition gives each job its own cores: {n_jobs} jobs need {n_jobs} cores, "
            f"{len(cores)} are usable here; run fewer jobs or use --mode timeslice"
        )
    sets = [tuple(cores[i * per_job : (i + 1) * per_job]) for i in range(n_jobs)]
    return [Placement(cpus=s, threads=len(s)) for s in sets]


def cuda_placements(mode: str, n_jobs: int, mps_threads_pct: int | None) -> list[Placement]:
    if mode == "partition":
        return [
            Placement(cuda_visible_devices=uuid, memory_bytes=memory)
            for uuid, memory in mig_instances()[:n_jobs]
        ]
    pct = mps_threads_pct if mode == "mps" else None
    return [Placement(mps_threads_pct=pct) for _ in range(n_jobs)]


def check_partition_count(placements: list[Placement], n_jobs: int) -> None:
    if len(placements) < n_jobs:
        raise GpulabError(
            f"--mode partition runs one job per MIG instance: {n_jobs} jobs, {len(placements)} "
            "instances; run fewer jobs or ask an administrator for more instances"
        )


def mig_instances(index: int = 0) -> list[tuple[str, int]]:
    """(UUID, memory bytes) of each MIG instance of GPU `index`, from NVML; a one-line error
    where MIG is not enabled."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            current, _ = pynvml.nvmlDeviceGetMigMode(handle)
        except pynvml.NVMLError:
            current = 0
        found = _mig_devices(pynvml, handle) if current else []
    finally:
        pynvml.nvmlShutdown()
    if not found:
        raise GpulabError(
            f"MIG is not enabled on GPU {index} (or it has no instances); an administrator "
            f"enables it with `nvidia-smi -i {index} -mig 1` and creates instances with "
            "`nvidia-smi mig -cgi <profiles> -C`; or use --mode timeslice or mps"
        )
    return found


def _mig_devices(pynvml, handle) -> list[tuple[str, int]]:
    found = []
    for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
        except pynvml.NVMLError:
            continue
        uuid = pynvml.nvmlDeviceGetUUID(mig)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        found.append((uuid, int(pynvml.nvmlDeviceGetMemoryInfo(mig).total)))
    return found


def device_memory_bytes(device_type: str) -> int:
    """What jobs that share the whole device must fit in together: host RAM or the GPU's memory
    (a MIG instance's own memory is its placement's `memory_bytes`)."""
    if device_type == "cpu":
        import psutil

        return int(psutil.virtual_memory().total)
    import torch

    return int(torch.cuda.mem_get_info()[1])


@contextlib.contextmanager
def mps_daemon(folder: Path):
    """A private MPS control daemon whose pipe and log folders are under `folder`; yields the
    environment its clients need and always shuts it down (success, failure, Ctrl-C)."""
    binary = shutil.which(MPS_CONTROL)
    if binary is None:
        raise GpulabError(
            f"--mode mps needs {MPS_CONTROL} (part of the NVIDIA driver) on PATH; install it or "
            "use --mode timeslice"
        )
    env = {
        "CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(folder / "log"),
    }
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    started = subprocess.run(
        [binary, "-d"], env={**os.environ, **env}, capture_output=True, text=True
    )
    if started.returncode != 0:
        why = (started.stderr.strip().splitlines() or [f"exit code {started.returncode}"])[-1]
        raise GpulabError(
            f"cannot start the MPS daemon ({why}); check permissions or use --mode timeslice"
        )
    try:
        yield env
    finally:
        subprocess.run(
            [binary], input="quit\n", env={**os.environ, **env}, capture_output=True, text=True
        )
