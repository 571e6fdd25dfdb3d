"""The style platform's API: embedded images, style jobs (optimisation or a trained network) and
the gallery of recent results."""

import json
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json
from gpulab.web import guards
from gpulab.web.errors import ApiError
from gpulab.web.inputs import EMBEDDED, embedded_names, embedded_png, image_field
from gpulab.web.run_view import is_stylize_result, stylize_figures
from gpulab.web.state import State, WebState
from gpulab.web.submit import new_job_folder, removed_on_failure, submit

router = APIRouter()
GALLERY_SIZE = 12


@router.get("/api/embedded")
def embedded_list():
    return {"content": embedded_names("content"), "style": embedded_names("style")}


@router.get("/api/embedded/{name}")
def embedded_file(name: str, state: State):
    if name not in EMBEDDED:
        raise ApiError(404, f"no embedded image {name!r}")
    return FileResponse(embedded_png(state.results, name), media_type="image/png")


@router.post("/api/style", status_code=202)
async def style_job(request: Request, state: State):
    form = await request.form()
    mode = str(form.get("mode") or "optimize")
    cfg = style_config(form, mode)
    model = trained_network(form, state.runs_root) if mode == "model" else None
    roles = ("content", "style") if mode == "optimize" else ("content",)
    with removed_on_failure(new_job_folder(state.results)) as folder:
        for role in roles:  # each kept as ROLE.png in the job's folder
            await image_field(form, role, folder, state.results, state.max_upload_mb)

    def work(job):
        if model is not None:
            return apply_network(job, state, model)
        return stylize(job, state, cfg)

    return submit(state.jobs, "style", folder, work)


def style_config(form, mode: str):
    """The form's weights, size and steps; checked against their ranges in optimisation mode."""
    from gpulab.workloads.style.optimize import StylizeConfig

    try:
        cfg = StylizeConfig(
            content_weight=float(form.get("content_weight", 1.0)),
            style_weight=float(form.get("style_weight", 5.0)),
            size=int(form.get("size", 256)),
            steps=int(form.get("steps", 100)),
        )
    except ValueError:
        raise ApiError(400, "weights, size and steps must be numbers") from None
    if mode not in ("optimize", "model"):
        raise ApiError(400, "mode must be optimize or model")
    if mode == "optimize":
        try:
            cfg.validate()
        except GpulabError as e:
            raise ApiError(422, str(e).replace("--", "")) from None
    return cfg


def trained_network(form, runs_root: Path) -> Path:
    """The style run named by the form's model_run: a trained network, not a stylize result."""
    model = guards.run_dir(runs_root, str(form.get("model_run", "")), "style")
    if is_stylize_result(model):
        raise ApiError(400, "that run is a stylize result, not a trained style network")
    return model


def stylize(job, state: WebState, cfg) -> dict:
    """Optimise the job's content image toward its style image (Gatys), reporting each step."""
    from gpulab.workloads.style.workload import run_stylize

    def progress(step: int, losses: dict) -> None:
        job.report(step / cfg.steps, f"step {step}/{cfg.steps}, loss {losses['total']:.4g}")

    out_dir = state.results / job.id
    run, record = run_stylize(
        out_dir / "content.png", out_dir / "style.png", out_dir / "result.png", cfg, state.device,
        out=state.runs_root, force=True, progress=progress,
    )  # fmt: skip
    result = {
        **result_urls(job.id, style=True),
        "run": str(Path(run).relative_to(state.runs_root)),
        **stylize_figures(record),
        "content_weight": cfg.content_weight,
        "style_weight": cfg.style_weight,
    }
    return kept(out_dir, result)


def apply_network(job, state: WebState, model: Path) -> dict:
    """Apply a trained style network (Johnson) to the job's content image in one pass."""
    from gpulab.workloads.style.workload import apply_style_model

    out_dir = state.results / job.id
    job.report(0.1, "applying the trained network")
    apply_style_model(
        model, out_dir / "content.png", out_dir / "result.png", state.device, force=True
    )
    result = {
        **result_urls(job.id, style=False),
        "run": str(model.relative_to(state.runs_root.resolve())),
    }
    return kept(out_dir, result)


def result_urls(job_id: str, style: bool) -> dict:
    return {
        "image": f"/results/{job_id}/result.png",
        "content": f"/results/{job_id}/content.png",
        "style": f"/results/{job_id}/style.png" if style else None,
    }


def kept(out_dir: Path, result: dict) -> dict:
    """Write the result's meta.json (what the gallery lists) and return the result."""
    atomic_write_json(out_dir / "meta.json", {"kind": "style", "created": time.time(), **result})
    return result


@router.get("/api/gallery")
def gallery(state: State):
    """The newest style results of this server, newest first."""
    items = []
    for meta in state.results.glob("*/meta.json"):
        try:
            items.append(json.loads(meta.read_text()))
        except (OSError, ValueError):
            continue
    items.sort(key=lambda m: m.get("created", 0), reverse=True)
    return items[:GALLERY_SIZE]
