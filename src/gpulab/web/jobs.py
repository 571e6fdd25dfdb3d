"""One bounded queue for the server's device work: job ids, progress, cancel, a fixed number of
jobs running at a time, and a clear refusal when the queue is full."""

import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from gpulab.runtime.errors import GpulabError

RUNNING, QUEUED, DONE, FAILED, CANCELLED = "running", "queued", "done", "failed", "cancelled"


class QueueFull(Exception):
    pass


class Cancelled(Exception):
    """Raised inside a job's work when the job was cancelled."""


@dataclass
class Job:
    id: str
    kind: str
    status: str = QUEUED
    progress: float = 0.0  # 0..1
    message: str = ""
    result: dict = field(default_factory=dict)
    error: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def report(self, progress: float, message: str = "") -> None:
        """Called by the work as it goes; raises Cancelled once the job is cancelled."""
        if self.cancel_requested.is_set():
            raise Cancelled
        self.progress, self.message = max(0.0, min(1.0, progress)), message

    def public(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
        }


class JobQueue:
    """`workers` threads run jobs one at a time each; at most `max_pending` wait."""

    def __init__(self, workers: int = 1, max_pending: int = 8, keep: int = 200):
        self.max_pending, self.keep = max_pending, keep
        self.jobs: dict[str, Job] = {}
        self.work: dict[str, Callable[[Job], dict]] = {}
        self.pending: queue.Queue[str] = queue.Queue()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._worker, name=f"gpulab-job-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self.threads:
            t.start()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def submit(self, kind: str, work: Callable[[Job], dict], job_id: str | None = None) -> Job:
        """Queue `work`; `job_id` (from new_id) when the caller prepared files under it."""
        with self.lock:
            waiting = sum(1 for j in self.jobs.values() if j.status == QUEUED)
            if waiting >= self.max_pending:
                raise QueueFull
            job = Job(job_id or self.new_id(), kind)
            self.jobs[job.id] = job
            self.work[job.id] = work
            self._forget_old()
        self.pending.put(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        with self.lock:
            if job.status == QUEUED:
                job.status, job.finished = CANCELLED, time.time()
            elif job.status == RUNNING:
                job.cancel_requested.set()  # the work stops at its next progress report
        return job

    def _worker(self) -> None:
        while True:
            job_id = self.pending.get()
            job = self.jobs.get(job_id)
            with self.lock:
                if job is None or job.status != QUEUED:
                    continue
                job.status = RUNNING
            work = self.work.pop(job_id)
            try:
                result = work(job)
                job.result, job.progress, job.status = result, 1.0, DONE
            except Cancelled:
                job.status = CANCELLED
            except GpulabError as e:
                job.status, job.error = FAILED, str(e)
            except Exception as e:  # noqa: BLE001 - a job's crash must never stop the server
                job.status, job.error = FAILED, f"{type(e).__name__}: {e}"
                traceback.print_exc()
            job.finished = time.time()

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.finished is not None]
        for j in sorted(finished, key=lambda j: j.finished)[: max(0, len(self.jobs) - self.keep)]:
            del self.jobs[j.id]

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for j in self.jobs.values():
            out[j.status] = out.get(j.status, 0) + 1
        return out
