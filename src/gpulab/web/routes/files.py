"""Files by validated names: a job's images, a run's plots, a bench or share report."""

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gpulab.web import guards
from gpulab.web.state import State

router = APIRouter()


@router.get("/results/{job_id}/{name}")
def result_file(job_id: str, name: str, state: State):
    return FileResponse(guards.result_file(state.results, job_id, name), media_type="image/png")


@router.get("/files/runs/{workload}/{run}/{name}")
def run_file(workload: str, run: str, name: str, state: State):
    path = guards.run_file(state.runs_root, workload, run, name)
    return FileResponse(path, media_type="image/png")


@router.get("/files/reports/{stamp}/{name}")
def report_file(stamp: str, name: str, state: State):
    path, media_type = guards.report_file(state.runs_root, stamp, name)
    return FileResponse(path, media_type=media_type)


@router.get("/files/share/{stamp}/{name}")
def share_report_file(stamp: str, name: str, state: State):
    path, media_type = guards.report_file(state.runs_root, stamp, name, "share")
    return FileResponse(path, media_type=media_type)
