"""`gpulab serve`: the style transformation platform, captioning, and runs and reports, in the
browser, over a small JSON API that uses gpulab's own library calls.

Device work goes through one bounded JobQueue. Uploads are size-limited, sniffed by decoding
them (never trusted by name), and guarded against decompression bombs; files are served only
from the server's result folder and the runs root, by validated names.
"""

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write, atomic_write_json, ensure_writable_dir
from gpulab.web import pages
from gpulab.web.jobs import DONE, JobQueue, QueueFull

EMBEDDED = {"china": "content", "flower": "content", "painting": "style"}
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID = re.compile(r"^[a-z]+/[A-Za-z0-9._-]+$")
RESULT_FILES = {"result.png", "content.png", "style.png"}
MB = 2**20


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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
    jobs = JobQueue(workers, max_pending)
    limit = int(max_upload_mb * MB)
    app = FastAPI(title="gpulab", description="Style transfer, captioning, runs and reports.")
    app.state.jobs = jobs

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None:
            given = (
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                or request.query_params.get("token")
                or request.cookies.get("gpulab_token")
            )
            if given != token:
                return JSONResponse(
                    {"error": "this server needs its token: send Authorization: Bearer TOKEN"},
                    status_code=401,
                )
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit + MB:
            return JSONResponse(
                {"error": f"upload too large: the limit is {max_upload_mb:g} MB"}, status_code=413
            )
        response = await call_next(request)
        if token is not None and request.query_params.get("token") == token:
            response.set_cookie("gpulab_token", token, httponly=True, samesite="strict")
        return response

    # -- pages -------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def style_page():
        return pages.style_page()

    @app.get("/caption", response_class=HTMLResponse)
    def caption_page():
        return pages.caption_page()

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page():
        return pages.runs_page()

    # -- inputs ------------------------------------------------------------------------------------

    async def read_upload(upload: UploadFile, what: str) -> bytes:
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"{what}: upload too large; the limit is {max_upload_mb:g} MB")
        if not data:
            raise ApiError(400, f"{what}: the upload is empty; send a JPEG or PNG image")
        return data

    def checked_image(data: bytes, folder: Path, name: str):
        """Decode the bytes (content sniffed, bomb-guarded) and keep them as NAME.png."""
        from gpulab.data.images import open_image, save_image

        raw = folder / f"{name}.upload"
        atomic_write(raw, lambda f: f.write(data))
        try:
            image = open_image(raw)
        except GpulabError as e:
            message = str(e).replace(str(raw), f"the {name} upload")
            raise ApiError(400, message) from None
        finally:
            raw.unlink(missing_ok=True)
        save_image(image, folder / f"{name}.png")
        return folder / f"{name}.png"

    def embedded_png(name: str) -> Path:
        """An embedded image as PNG, made once under the result folder."""
        from gpulab.data.images import save_image
        from gpulab.data.samples import bundled_photo, generated_painting

        path = results / "embedded" / f"{name}.png"
        if not path.is_file():
            image = generated_painting(512) if name == "painting" else bundled_photo(name)
            save_image(image, path)
        return path

    def embedded_image(name: str, role: str, folder: Path) -> Path:
        if EMBEDDED.get(name) != role:
            known = ", ".join(k for k, v in EMBEDDED.items() if v == role)
            raise ApiError(400, f"unknown embedded {role} image {name!r}; use one of {known}")
        data = embedded_png(name).read_bytes()
        atomic_write(folder / f"{role}.png", lambda f: f.write(data))
        return folder / f"{role}.png"

    def run_dir(run_id: str, workload: str) -> Path:
        if not RUN_ID.match(run_id or "") or not run_id.startswith(f"{workload}/"):
            raise ApiError(404, f"unknown {workload} run {run_id!r}; pick one from /api/runs")
        path = (runs_root / run_id).resolve()
        if runs_root.resolve() not in path.parents or not (path / "record.json").is_file():
            raise ApiError(404, f"unknown {workload} run {run_id!r}; pick one from /api/runs")
        return path

    def new_job_folder() -> Path:
        """The folder of the job to come, named by its id: ready before the job can start."""
        folder = results / JobQueue.new_id()
        folder.mkdir(parents=True)
        return folder

    def submit(kind: str, folder: Path, work) -> JSONResponse:
        try:
            job = jobs.submit(kind, work, job_id=folder.name)
        except QueueFull:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(
                429, "the job queue is full; retry in a few seconds", {"Retry-After": "5"}
            ) from None
        return JSONResponse(
            {"id": job.id, "status": job.status, "status_url": f"/api/jobs/{job.id}"},
            status_code=202,
        )

    # -- API ---------------------------------------------------------------------------------------

    @app.get("/api/embedded")
    def embedded_list():
        return {
            "content": [k for k, v in EMBEDDED.items() if v == "content"],
            "style": [k for k, v in EMBEDDED.items() if v == "style"],
        }

    @app.get("/api/embedded/{name}")
    def embedded_file(name: str):
        if name not in EMBEDDED:
            raise ApiError(404, f"no embedded image {name!r}")
        return FileResponse(embedded_png(name), media_type="image/png")

    @app.post("/api/style", status_code=202)
    async def style_job(request: Request):
        from gpulab.workloads.style.optimize import StylizeConfig

        form = await request.form()
        mode = str(form.get("mode") or "optimize")
        try:
            cfg = StylizeConfig(
                content_weight=float(form.get("content_weight", 1.0)),
                style_weight=float(form.get("style_weight", 5.0)),
                size=int(form.get("size", 256)),
                steps=int(form.get("steps", 100)),
            )
        except ValueError:
            raise ApiError(400, "weights, size and steps must be numbers") from None
        if mode == "optimize":
            try:
                cfg.validate()
            except GpulabError as e:
                raise ApiError(422, str(e).replace("--", "")) from None
        elif mode != "model":
            raise ApiError(400, "mode must be optimize or model")
        model = run_dir(str(form.get("model_run", "")), "style") if mode == "model" else None
        if model is not None and json.loads((model / "record.json").read_text()).get("mode"):
            raise ApiError(400, "that run is a stylize result, not a trained style network")
        folder = new_job_folder()
        try:
            content = await _image_field(form, "content", folder)
            style = await _image_field(form, "style", folder) if mode == "optimize" else None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def work(job):
            out_dir = results / job.id
            if model is not None:
                return _apply_model(job, model, out_dir / "content.png", out_dir)
            return _stylize(job, cfg, out_dir, content, style)

        return submit("style", folder, work)

    async def _image_field(form, role: str, folder: Path) -> Path:
        upload = form.get(role)
        if upload is not None and hasattr(upload, "read") and getattr(upload, "filename", ""):
            return checked_image(await read_upload(upload, role), folder, role)
        name = str(form.get(f"{role}_name") or ("china" if role == "content" else "painting"))
        return embedded_image(name, role, folder)

    def _stylize(job, cfg, out_dir: Path, content: Path, style: Path) -> dict:
        from gpulab.workloads.style.workload import run_stylize

        def progress(step: int, losses: dict) -> None:
            job.report(step / cfg.steps, f"step {step}/{cfg.steps}, loss {losses['total']:.4g}")

        content, style = out_dir / content.name, out_dir / style.name
        run, record = run_stylize(
            content, style, out_dir / "result.png", cfg, device, out=runs_root, force=True,
            progress=progress,
        )  # fmt: skip
        result = {
            "image": f"/results/{job.id}/result.png",
            "content": f"/results/{job.id}/content.png",
            "style": f"/results/{job.id}/style.png",
            "run": str(Path(run).relative_to(runs_root)),
            "seconds": record["timing"]["seconds_per_image"],
            "pretrained": record["pretrained"],
            "content_weight": cfg.content_weight,
            "style_weight": cfg.style_weight,
        }
        atomic_write_json(
            out_dir / "meta.json", {"kind": "style", "created": time.time(), **result}
        )
        return result

    def _apply_model(job, model: Path, content: Path, out_dir: Path) -> dict:
        from gpulab.workloads.style.workload import apply_style_model

        content = out_dir / content.name
        job.report(0.1, "applying the trained network")
        apply_style_model(model, content, out_dir / "result.png", device, force=True)
        result = {
            "image": f"/results/{job.id}/result.png",
            "content": f"/results/{job.id}/content.png",
            "style": None,
            "run": str(model.relative_to(runs_root.resolve())),
        }
        atomic_write_json(
            out_dir / "meta.json", {"kind": "style", "created": time.time(), **result}
        )
        return result

    @app.post("/api/caption", status_code=202)
    async def caption_job(request: Request):
        form = await request.form()
        model = run_dir(str(form.get("run", "")), "caption")
        try:
            beam = int(form.get("beam", 3))
        except ValueError:
            raise ApiError(400, "beam must be a whole number") from None
        if not 1 <= beam <= 20:
            raise ApiError(422, "beam must lie in 1..20")
        upload = form.get("image")
        if upload is None or not hasattr(upload, "read"):
            raise ApiError(400, "send the image to caption as the 'image' file field")
        folder = new_job_folder()
        try:
            checked_image(await read_upload(upload, "image"), folder, "content")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def work(job):
            from gpulab.workloads.caption.workload import caption_images

            job.report(0.1, "captioning")
            image = results / job.id / "content.png"
            (found,) = caption_images([image], model, beam, device)
            return {
                "image": f"/results/{job.id}/content.png",
                "caption": found["caption"],
                "logprob": found["logprob"],
                "run": str(model.relative_to(runs_root.resolve())),
                "beam": beam,
            }

        return submit("caption", folder, work)

    def job_or_404(job_id: str):
        job = jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise ApiError(
                404, f"no job {job_id!r}; job ids come from POST /api/style or /api/caption"
            )
        return job

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str):
        return job_or_404(job_id).public()

    @app.delete("/api/jobs/{job_id}")
    def job_cancel(job_id: str):
        job_or_404(job_id)
        return jobs.cancel(job_id).public()

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: str):
        job = job_or_404(job_id)

        async def stream():
            last = None
            while True:
                state = json.dumps(job.public())
                if state != last:
                    yield f"data: {state}\n\n"
                    last = state
                if job.finished is not None:
                    return
                await asyncio.sleep(0.3)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/api/runs")
    def runs_list():
        from gpulab.runtime.records import list_runs

        out = []
        for r in reversed(list_runs(runs_root)):
            rel = r.run_dir.relative_to(runs_root)
            out.append(
                {
                    "id": str(rel),
                    "workload": r.workload,
                    "device": r.device,
                    "created_utc": r.created_utc,
                    "status": r.status,
                    "samples_per_s": r.samples_per_s,
                    "key_metric": r.key_metric,
                    "mode": r.mode,
                    "plots": [
                        f"/files/runs/{rel}/{p.name}" for p in sorted(r.run_dir.glob("*.png"))
                    ],
                }
            )
        return out

    @app.get("/api/reports/latest")
    def latest_report():
        found = sorted((runs_root / "bench").glob("*/results.json"))
        if not found:
            raise ApiError(404, "no bench report yet; run `gpulab bench`")
        doc = json.loads(found[-1].read_text())
        stamp = found[-1].parent.name
        return {
            "id": stamp,
            "html": f"/files/reports/{stamp}/report.html",
            "markdown": f"/files/reports/{stamp}/report.md",
            "created_utc": doc.get("created_utc"),
            "mode": doc.get("mode"),
            "rows": doc.get("rows", []),
            "probe": (doc.get("probe") or {}).get("verdict"),
        }

    @app.get("/api/gallery")
    def gallery():
        items = []
        for meta in results.glob("*/meta.json"):
            try:
                items.append(json.loads(meta.read_text()))
            except (OSError, ValueError):
                continue
        items.sort(key=lambda m: m.get("created", 0), reverse=True)
        return items[:12]

    # -- files ---------------------------------------------------------------------------------------

    @app.get("/results/{job_id}/{name}")
    def result_file(job_id: str, name: str):
        path = results / job_id / name
        if not JOB_ID.match(job_id) or name not in RESULT_FILES or not path.is_file():
            raise ApiError(404, "no such result")
        return FileResponse(path, media_type="image/png")

    @app.get("/files/runs/{workload}/{run}/{name}")
    def run_file(workload: str, run: str, name: str):
        path = (runs_root / workload / run / name).resolve()
        ok = RUN_ID.match(f"{workload}/{run}") and name.endswith(".png") and "/" not in name
        if not ok or runs_root.resolve() not in path.parents or not path.is_file():
            raise ApiError(404, "no such run file")
        return FileResponse(path, media_type="image/png")

    @app.get("/files/reports/{stamp}/{name}")
    def report_file(stamp: str, name: str):
        path = runs_root / "bench" / stamp / name
        ok = re.match(r"^[0-9TZ]+$", stamp) and name in ("report.html", "report.md")
        if not ok or not path.is_file():
            raise ApiError(404, "no such report")
        kind = "text/html" if name.endswith(".html") else "text/markdown"
        return FileResponse(path, media_type=kind)

    @app.get("/api/health")
    def health():
        return {"ok": True, "jobs": jobs.counts(), "done_status": DONE}

    return app
