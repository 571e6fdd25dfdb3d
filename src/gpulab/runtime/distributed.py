"""torchrun detection, process-group set-up and rank-aware printing.

Single-process runs take the same code path with world size 1.
"""

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from gpulab.runtime.errors import GpulabError


@dataclass(frozen=True)
class DistInfo:
    world_size: int
    rank: int
    local_rank: int
    backend: str | None  # nccl for CUDA, gloo for CPU; None when not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_command(nproc: int, *gpulab_args, launcher=()) -> list[str]:
    """The command that runs `gpulab ARGS` as `nproc` local processes under torchrun, with any
    extra launcher options (e.g. --max-restarts) before the program."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *map(str, launcher),
        "-m",
        "gpulab",
        *map(str, gpulab_args),
    ]


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def dist_info() -> DistInfo:
    """What torchrun told this process (or world size 1 when it was not launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_world_size(),
            dist.get_rank(),
            int(os.environ.get("LOCAL_RANK", 0)),
            dist.get_backend(),
        )
    if not launched_by_torchrun():
        return DistInfo(1, 0, 0, None)
    return DistInfo(
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["RANK"]),
        int(os.environ.get("LOCAL_RANK", 0)),
        None,
    )


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process owns the GPU of its local rank."""
    if device.type == "cuda" and launched_by_torchrun():
        index = int(os.environ.get("LOCAL_RANK", 0))
        if index >= torch.cuda.device_count():
            raise GpulabError(
                f"local rank {index} has no GPU of its own ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc-per-node)"
            )
        return torch.device("cuda", index)
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op otherwise."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return dist_info()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Each torchrun attempt gets its own key space: after a restart, no rank may read the
        # addresses that the previous attempt's (dead) workers published in the shared store.
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend=backend_for(device),
            store=dist.PrefixStore(f"gpulab/attempt_{attempt}", store),
            rank=rank,
            world_size=world_size,
        )
    return dist_info()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only."""
    if dist_info().is_main:
        print(*args, **kwargs)
        sys.stdout.flush()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) the same way on every rank."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
