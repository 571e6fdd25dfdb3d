"""Image files in and out: checked loading, EXIF orientation, every mode to RGB, atomic saving.

Every problem with a user's file becomes a one-line GpulabError that names it and the fix.
"""

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write

MAX_PIXELS = 50_000_000  # a decompression-bomb guard: ~7,000 x 7,000


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and 32-bit grey are rescaled, alpha is laid on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def open_image(
    path: Path, max_pixels: int = MAX_PIXELS, at_least: int | None = None
) -> Image.Image:
    """An RGB PIL image, upright as its EXIF orientation says, or a GpulabError.

    `at_least`: the caller scales the image down to this many pixels on its shorter side (or
    on both sides), so a JPEG is decoded at 1/2, 1/4 or 1/8 scale where both sides keep at
    least that many (libjpeg's DCT scaling: ~3x faster on a 4000 x 2800 photo for 256 px).
    """
    path = Path(path)
    if path.is_dir():
        raise GpulabError(f"{path} is a folder; pass an image file")
    if not path.is_file():
        raise GpulabError(f"no such file: {path}; pass the path of an image")
    if path.stat().st_size == 0:
        raise GpulabError(f"{path} is empty (0 bytes); pass a JPEG or PNG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(path, img.size, max_pixels)
                if at_least:
                    img.draft(None, (at_least, at_least))  # a no-op for other formats
                img.load()
                img = ImageOps.exif_transpose(img)
                return _pil_to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise GpulabError(
            f"{path} is too large to decode safely (limit {max_pixels:,} pixels); pass a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise GpulabError(f"{path} is not an image file PIL can read; pass a JPEG or PNG") from None
    except OSError as e:
        raise GpulabError(f"{path} could not be decoded ({e}); the file may be truncated") from None


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise GpulabError(
            f"{path} is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; "
            "pass a smaller image"
        )


def resize_longer_side(img: Image.Image, size: int) -> Image.Image:
    """Keep the aspect ratio; the longer side becomes `size` pixels."""
    w, h = img.size
    scale = size / max(w, h)
    return img.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
    )


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 RGB in [0, 1]."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> RGB PIL image (clamped, rounded)."""
    a = image.detach().float().cpu().clamp(0, 1).squeeze(0).permute(1, 2, 0).numpy()
    return Image.fromarray((a * 255.0 + 0.5).astype(np.uint8), "RGB")


def image_format(path: Path) -> str:
    """PIL's format name for an output path's extension, or a GpulabError."""
    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise GpulabError(
            f"cannot write images as {ext or 'files without an extension'}; use .png or .jpg"
        )
    return fmt


def check_output(path: Path, force: bool) -> None:
    """Before any work: a known image extension, no existing file (unless force), a writable folder."""
    path = Path(path)
    image_format(path)
    if path.exists() and not force:
        raise GpulabError(f"{path} already exists; pass --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise GpulabError(f"cannot write {path}: folder {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".gpulab-"):
            pass
    except OSError:
        raise GpulabError(f"cannot write {path}: {parent} is not writable") from None


def save_image(image: torch.Tensor | Image.Image, path: Path) -> None:
    """Write atomically in the format the extension names."""
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    buf = io.BytesIO()
    pil.save(
        buf,
        format=image_format(path),
        **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}),
    )
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def side_by_side(images: list[Image.Image], height: int, gap: int = 8) -> Image.Image:
    """Images scaled to one height and laid out left to right on white, `gap` pixels apart."""
    scaled = [
        img.resize((max(1, round(img.width * height / img.height)), height)) for img in images
    ]
    canvas = Image.new(
        "RGB", (sum(i.width for i in scaled) + gap * (len(scaled) - 1), height), "white"
    )
    x = 0
    for img in scaled:
        canvas.paste(img, (x, 0))
        x += img.width + gap
    return canvas
