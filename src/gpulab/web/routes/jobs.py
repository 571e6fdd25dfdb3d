"""A job's status, its cancellation and its live events; the server's health."""

import asyncio
import json

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gpulab.web.guards import find_job
from gpulab.web.jobs import DONE, Job
from gpulab.web.state import State

router = APIRouter()
EVENT_POLL_S = 0.3


@router.get("/api/jobs/{job_id}")
def job_status(job_id: str, state: State):
    return find_job(state.jobs, job_id).public()


@router.delete("/api/jobs/{job_id}")
def job_cancel(job_id: str, state: State):
    find_job(state.jobs, job_id)
    return state.jobs.cancel(job_id).public()


@router.get("/api/jobs/{job_id}/events")
async def job_events(job_id: str, state: State):
    job = find_job(state.jobs, job_id)
    return StreamingResponse(job_states(job), media_type="text/event-stream")


async def job_states(job: Job):
    """Server-sent events: the job's public state each time it changes, until it finishes."""
    last = None
    while True:
        current = json.dumps(job.public())
        if current != last:
            yield f"data: {current}\n\n"
            last = current
        if job.finished is not None:
            return
        await asyncio.sleep(EVENT_POLL_S)


@router.get("/api/health")
def health(state: State):
    return {"ok": True, "jobs": state.jobs.counts(), "done_status": DONE}
