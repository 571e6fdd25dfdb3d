"""Path guards: every file the server sends or reads by a name from a request is found here, by
a validated name, inside its own folder once links are followed. Plain functions of their
folders, so each refusal can be tested without a server."""

import re
from pathlib import Path

from gpulab.runtime.records import RECORD
from gpulab.web.errors import ApiError
from gpulab.web.jobs import Job, JobQueue

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID = re.compile(r"^[a-z]+/[A-Za-z0-9._-]+$")
REPORT_STAMP = re.compile(r"^[0-9TZ]+$")
RESULT_FILES = {"result.png", "content.png", "style.png"}
REPORT_FILES = {"report.html": "text/html", "report.md": "text/markdown"}
# what each kind of report folder (runs/bench/STAMP, runs/share/STAMP) may serve
REPORT_KINDS = {
    "bench": REPORT_FILES,
    "share": {**REPORT_FILES, "np_per_job.png": "image/png"},
}


def inside(path: Path, root: Path) -> bool:
    """Whether `path` lies under `root` with every link followed (`..` and links out refused)."""
    return Path(root).resolve() in Path(path).resolve().parents


def run_dir(runs_root: Path, run_id: str, workload: str) -> Path:
    """The resolved folder of a `workload` run named `workload/NAME` under `runs_root`."""
    unknown = ApiError(404, f"unknown {workload} run {run_id!r}; pick one from /api/runs")
    if not RUN_ID.match(run_id or "") or not run_id.startswith(f"{workload}/"):
        raise unknown
    path = (Path(runs_root) / run_id).resolve()
    if not inside(path, runs_root) or not (path / RECORD).is_file():
        raise unknown
    return path


def result_file(results: Path, job_id: str, name: str) -> Path:
    """One of a job's images in the server's result folder."""
    path = Path(results) / job_id / name
    ok = JOB_ID.match(job_id) and name in RESULT_FILES
    if not ok or not inside(path, results) or not path.is_file():
        raise ApiError(404, "no such result")
    return path


def run_file(runs_root: Path, workload: str, run: str, name: str) -> Path:
    """A plot (PNG) inside a run's folder."""
    path = (Path(runs_root) / workload / run / name).resolve()
    ok = RUN_ID.match(f"{workload}/{run}") and name.endswith(".png") and "/" not in name
    if not ok or not inside(path, runs_root) or not path.is_file():
        raise ApiError(404, "no such run file")
    return path


def report_file(runs_root: Path, stamp: str, name: str, kind: str = "bench") -> tuple[Path, str]:
    """A file of a bench or share report (HTML, markdown, the share chart) and its media type."""
    files = REPORT_KINDS[kind]
    path = Path(runs_root) / kind / stamp / name
    ok = REPORT_STAMP.match(stamp) and name in files
    if not ok or not inside(path, runs_root) or not path.is_file():
        raise ApiError(404, "no such report")
    return path, files[name]


def find_job(jobs: JobQueue, job_id: str) -> Job:
    """A job of the queue by its id, or a 404 saying where ids come from."""
    job = jobs.get(job_id) if JOB_ID.match(job_id) else None
    if job is None:
        raise ApiError(404, f"no job {job_id!r}; job ids come from POST /api/style or /api/caption")
    return job
