"""torchrun detection, process-group set-up and rank-aware printing.

Single-process runs take the same code path with world size 1.
"""

import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from gpulab.runtime.errors import GpulabError, first_line


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
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            backend=backend_for(device),
            store=_round_store(rank, world_size),
            rank=rank,
            world_size=world_size,
        )
    return dist_info()


STORE_TIMEOUT_S = 300  # how long ranks wait for each other to join (rank 0 hosts the store)


def _round_store(rank: int, world_size: int) -> dist.Store:
    """The process group's store: hosted by rank 0 beside torchrun's own (MASTER_PORT + 1) and
    started afresh by every torchrun round's workers, so no rank reads the addresses an earlier
    round's (dead) workers published. torchrun's store outlives its rounds, and its restart
    count is no round number: a node whose workers are restarted because another node failed
    does not count it."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1
    try:
        return dist.TCPStore(
            host, port, world_size, is_master=rank == 0,
            timeout=timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False,
        )  # fmt: skip
    except (RuntimeError, OSError) as e:
        raise GpulabError(
            f"rank {rank} could not {'host' if rank == 0 else 'reach'} the process group's store "
            f"at {host}:{port} (MASTER_PORT + 1): {first_line(e)}; check that the nodes reach each other "
            f"on that port, or that it is free on {host}"
        ) from None


def from_rank0(value):
    """Rank 0's `value` on every rank (a picklable object); `value` itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
