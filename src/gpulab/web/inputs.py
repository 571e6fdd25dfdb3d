"""Upload checks and the embedded images: an upload is size-limited and decoded (content sniffed,
never trusted by its name; decompression bombs refused) before any job sees it."""

from pathlib import Path

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write
from gpulab.web.errors import ApiError

MB = 2**20
EMBEDDED = {"china": "content", "flower": "content", "painting": "style"}


def upload_limit_bytes(max_upload_mb: float) -> int:
    return int(max_upload_mb * MB)


def check_upload(data: bytes, what: str, max_upload_mb: float) -> bytes:
    """The bytes of an upload, refused when over the limit or empty."""
    if len(data) > upload_limit_bytes(max_upload_mb):
        raise ApiError(413, f"{what}: upload too large; the limit is {max_upload_mb:g} MB")
    if not data:
        raise ApiError(400, f"{what}: the upload is empty; send a JPEG or PNG image")
    return data


async def read_upload(upload, what: str, max_upload_mb: float) -> bytes:
    """Read at most one byte past the limit: enough to refuse, never the whole of a huge body."""
    data = await upload.read(upload_limit_bytes(max_upload_mb) + 1)
    return check_upload(data, what, max_upload_mb)


def checked_image(data: bytes, folder: Path, name: str) -> Path:
    """Decode the bytes (content sniffed, bomb-guarded) and keep them as NAME.png in `folder`."""
    from gpulab.data.images import open_image, save_image

    raw = folder / f"{name}.upload"
    atomic_write(raw, lambda f: f.write(data))
    try:
        image = open_image(raw)
    except GpulabError as e:
        raise ApiError(400, str(e).replace(str(raw), f"the {name} upload")) from None
    finally:
        raw.unlink(missing_ok=True)
    save_image(image, folder / f"{name}.png")
    return folder / f"{name}.png"


def embedded_names(role: str) -> list[str]:
    return [k for k, v in EMBEDDED.items() if v == role]


def embedded_png(results: Path, name: str) -> Path:
    """An embedded image as PNG, made once under the result folder."""
    from gpulab.data.images import save_image
    from gpulab.data.samples import bundled_photo, generated_painting

    path = Path(results) / "embedded" / f"{name}.png"
    if not path.is_file():
        image = generated_painting(512) if name == "painting" else bundled_photo(name)
        save_image(image, path)
    return path


def embedded_image(results: Path, name: str, role: str, folder: Path) -> Path:
    """Copy the embedded image `name` into a job's folder as ROLE.png."""
    if EMBEDDED.get(name) != role:
        known = ", ".join(embedded_names(role))
        raise ApiError(400, f"unknown embedded {role} image {name!r}; use one of {known}")
    data = embedded_png(results, name).read_bytes()
    atomic_write(folder / f"{role}.png", lambda f: f.write(data))
    return folder / f"{role}.png"


async def image_field(form, role: str, folder: Path, results: Path, max_upload_mb: float) -> Path:
    """The form's ROLE image: its upload when one was sent, else the embedded image it names."""
    upload = form.get(role)
    if upload is not None and hasattr(upload, "read") and getattr(upload, "filename", ""):
        return checked_image(await read_upload(upload, role, max_upload_mb), folder, role)
    name = str(form.get(f"{role}_name") or ("china" if role == "content" else "painting"))
    return embedded_image(results, name, role, folder)
