"""Caption jobs: an uploaded image captioned by a trained caption run, with beam search."""

from pathlib import Path

from fastapi import APIRouter, Request

from gpulab.web import guards
from gpulab.web.errors import ApiError
from gpulab.web.inputs import checked_image, read_upload
from gpulab.web.state import State, WebState
from gpulab.web.submit import new_job_folder, removed_on_failure, submit

router = APIRouter()
MAX_BEAM = 20


@router.post("/api/caption", status_code=202)
async def caption_job(request: Request, state: State):
    form = await request.form()
    model = guards.run_dir(state.runs_root, str(form.get("run", "")), "caption")
    beam = beam_width(form.get("beam", 3))
    upload = form.get("image")
    if upload is None or not hasattr(upload, "read"):
        raise ApiError(400, "send the image to caption as the 'image' file field")
    with removed_on_failure(new_job_folder(state.results)) as folder:
        checked_image(await read_upload(upload, "image", state.max_upload_mb), folder, "content")
    return submit(state.jobs, "caption", folder, lambda job: caption(job, state, model, beam))


def beam_width(value) -> int:
    """The form's beam width: a whole number in 1..MAX_BEAM."""
    try:
        beam = int(value)
    except ValueError:
        raise ApiError(400, "beam must be a whole number") from None
    if not 1 <= beam <= MAX_BEAM:
        raise ApiError(422, f"beam must lie in 1..{MAX_BEAM}")
    return beam


def caption(job, state: WebState, model: Path, beam: int) -> dict:
    """Caption the job's image with the library's own call."""
    from gpulab.workloads.caption.workload import caption_images

    job.report(0.1, "captioning")
    (found,) = caption_images([state.results / job.id / "content.png"], model, beam, state.device)
    return {
        "image": f"/results/{job.id}/content.png",
        "caption": found["caption"],
        "logprob": found["logprob"],
        "run": str(model.relative_to(state.runs_root.resolve())),
        "beam": beam,
    }
