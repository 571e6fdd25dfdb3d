"""What every request handler shares: folders, device, token, job queue and upload limit, in one
typed object on `app.state`, reached through a FastAPI dependency."""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from gpulab.web.inputs import upload_limit_bytes
from gpulab.web.jobs import JobQueue


@dataclass(frozen=True)
class WebState:
    """The server's settings and its one job queue; `results` holds the jobs' files."""

    results: Path
    runs_root: Path
    device: str
    token: str | None
    jobs: JobQueue
    max_upload_mb: float

    @property
    def upload_limit_bytes(self) -> int:
        return upload_limit_bytes(self.max_upload_mb)


def get_state(request: Request) -> WebState:
    """The dependency: the state `create_app` stored."""
    return request.app.state.web


State = Annotated[WebState, Depends(get_state)]
