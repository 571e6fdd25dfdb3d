"""`gpulab serve`: the style transformation platform, captioning, and runs and reports, in the
browser, over a small JSON API that uses gpulab's own library calls.

Device work goes through one bounded JobQueue. Uploads are size-limited, sniffed by decoding
them (never trusted by name), and guarded against decompression bombs; files are served only
from the server's result folder and the runs root, by validated names. `create_app` only
assembles: the handlers live in `gpulab.web.routes`, the checks in plain functions beside them.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gpulab.runtime.files import ensure_writable_dir
from gpulab.web.errors import ApiError, api_error_response
from gpulab.web.jobs import JobQueue
from gpulab.web.middleware import guard
from gpulab.web.routes import caption, files, jobs, pages, runs, style
from gpulab.web.state import WebState

STATIC = Path(__file__).parent / "static"


def create_app(
    results: Path = Path("runs/web"),
    runs_root: Path = Path("runs"),
    device: str = "auto",
    token: str | None = None,
    workers: int = 1,
    max_pending: int = 8,
    max_upload_mb: float = 20,
) -> FastAPI:
    """The server's app; `workers` jobs run at once on `device`, `max_pending` may wait."""
    results, runs_root = Path(results), Path(runs_root)
    ensure_writable_dir(results)
    app = FastAPI(title="gpulab", description="Style transfer, captioning, runs and reports.")
    app.state.web = WebState(
        results, runs_root, device, token, JobQueue(workers, max_pending), max_upload_mb
    )
    app.add_exception_handler(ApiError, api_error_response)
    app.middleware("http")(guard)
    for area in (pages, style, caption, jobs, runs, files):
        app.include_router(area.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
