"""Precision policy: fp32 (TF32 off), tf32, bf16 autocast, fp16 autocast + GradScaler."""

import contextlib
from dataclasses import dataclass

import torch

from gpulab.runtime.errors import GpulabError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    name: str
    autocast_dtype: torch.dtype | None  # None: no autocast
    tf32: bool

    @property
    def uses_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16

    def autocast(self, device: torch.device, cache: bool = True):
        """The context the forward pass and loss run under (cache=False inside a CUDA graph)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype, cache_enabled=cache)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16."""
        return torch.amp.GradScaler(device.type, enabled=self.uses_grad_scaler)


def bf16_where_supported(device: torch.device) -> str:
    """ "bf16" on CUDA GPUs that have it, else "fp32": the tensor-core default of the
    convolutional workloads."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Check that `device` can run precision `name` and set the matching TF32 flags."""
    name = (name or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise GpulabError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    if name == "tf32" and (device.type != "cuda" or _cuda_capability(device) < (8, 0)):
        raise GpulabError(
            f"tf32 needs an NVIDIA GPU of compute capability 8.0 or newer (not {device}); "
            "use fp32 or bf16"
        )
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GpulabError(
            f"bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16"
        )
    if name == "fp16" and device.type == "cpu":
        raise GpulabError("fp16 needs a GPU; on the CPU use bf16 or fp32")
    policy = Precision(
        name=name,
        autocast_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(name),
        tf32=name == "tf32",
    )
    set_tf32(policy.tf32)
    return policy


def set_tf32(enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions on or off (off means true fp32)."""
    torch.backends.fp32_precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
