"""Atomic checkpoints holding everything an exact resume needs."""

import io
from pathlib import Path

import torch

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, fsync, os.replace."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: a checkpoint can hold tensors and plain data, never code."""
    path = Path(path)
    if not path.is_file():
        raise GpulabError(f"no checkpoint at {path}; pass a run folder that finished a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GpulabError(
            f"{path} is not a readable gpulab checkpoint ({e}); pass another run"
        ) from e


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def load_weights(model: torch.nn.Module, state: dict, run_dir: Path) -> torch.nn.Module:
    """Load a checkpoint's weights, or say plainly that they belong to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise GpulabError(
            f"{run_dir}: its weights do not fit this gpulab's model ({first}); "
            "train the model again with this version"
        ) from None
    return model
