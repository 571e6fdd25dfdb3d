"""Figures written atomically as PNG, with a non-interactive backend."""

import contextlib
import io
from pathlib import Path

from gpulab.runtime.files import atomic_write


@contextlib.contextmanager
def save_figure(path: Path, figsize: tuple[float, float] = (8, 4.5), dpi: int = 120):
    """Yield a matplotlib Figure; on exit it is saved to `path` as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    yield fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))
