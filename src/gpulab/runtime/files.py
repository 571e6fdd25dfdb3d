"""Atomic file writes: a temp file in the same folder, fsync, then os.replace."""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gpulab.runtime.errors import GpulabError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` all at once: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise GpulabError(f"cannot write {path}: {e.strerror}; choose a writable location") from e
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, an I/O error: the old file stays as it was
        Path(tmp).unlink(missing_ok=True)
        raise GpulabError(
            f"cannot write {path}: {e.strerror or e}; free space or choose another location"
        ) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: os.umask sets the mask to read it, which other threads (the web
# server's jobs) would see if it were read for every file
UMASK = _umask()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def ensure_writable_dir(
    path: Path, what: str = "output folder", fix: str = "pass --out with a writable folder"
) -> Path:
    """Create `path` if needed and prove it is writable, or raise a GpulabError that says so:
    "{what} PATH is not writable (why); {fix}"."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gpulab-probe-"):
            pass
    except OSError as e:
        raise GpulabError(f"{what} {path} is not writable ({e.strerror or e}); {fix}") from e
    return path
