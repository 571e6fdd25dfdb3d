"""Handing device work to the job queue: a job's folder is ready before the job can start, and
removed again when the request fails or the queue refuses it."""

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.responses import JSONResponse

from gpulab.web.errors import ApiError
from gpulab.web.jobs import Job, JobQueue, QueueFull


def new_job_folder(results: Path) -> Path:
    """The folder of the job to come, named by its id."""
    folder = Path(results) / JobQueue.new_id()
    folder.mkdir(parents=True)
    return folder


@contextmanager
def removed_on_failure(folder: Path) -> Iterator[Path]:
    """Remove `folder` if the block raises (a bad upload leaves nothing behind)."""
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def submit(jobs: JobQueue, kind: str, folder: Path, work: Callable[[Job], dict]) -> JSONResponse:
    """Queue `work` as the job named by `folder`: 202 with its status URL, or 429 when full."""
    with removed_on_failure(folder):
        try:
            job = jobs.submit(kind, work, job_id=folder.name)
        except QueueFull:
            raise ApiError(
                429, "the job queue is full; retry in a few seconds", {"Retry-After": "5"}
            ) from None
    return JSONResponse(
        {"id": job.id, "status": job.status, "status_url": f"/api/jobs/{job.id}"},
        status_code=202,
    )
