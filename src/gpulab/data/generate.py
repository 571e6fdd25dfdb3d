"""Synthetic ImageNet-like JPEG folders for measuring an image input pipeline offline.

`write_image_folder` writes `out/class_000/img_000000.jpg`, ... in the ImageFolder layout that
torchvision reads. The images stand in for photos where it matters to a data loader: sizes vary
per image like ImageNet's (longer side 300-500 px, aspect ratios 2:3 ... 16:9) and the files are
about as large, because decode time follows bytes and pixels. Content is a soft colour gradient,
low-frequency blobs, oriented stripes, a few shapes and multi-scale noise, saved at JPEG quality
90. Each class has its own hue, stripe angle and shape type, so a small CNN can beat chance.

Measured on the 2-core dev machine, 1,000 images at size None, seed 0: mean file 111.4 kB
(kB = 1000 bytes; ImageNet's train JPEGs average ~110 kB), mean size 451x377 px; ~82 images/s
with workers=1 and ~153 images/s with workers=2 (~76 per core).
"""

import colorsys
import io
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gpulab.runtime.device import usable_cores
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write, ensure_writable_dir

MIN_SIDE_PX, MAX_SIDE_PX = 16, 4096
JPEG_QUALITY = 90
# (width, height) aspect ratios and how often each is drawn: landscape 4:3 dominates, as in ImageNet
ASPECTS = ((4 / 3, 0.45), (3 / 2, 0.15), (3 / 4, 0.15), (1.0, 0.10), (16 / 9, 0.10), (2 / 3, 0.05))
GOLDEN = (math.sqrt(5) - 1) / 2  # spreads class angles evenly whatever the class count
# std of each coarse grey noise octave and of the full-resolution one, in 0-255 levels;
# FINE_NOISE is the knob that sets the mean file size
OCTAVE_NOISE, FINE_NOISE = 12.0, 36.0

Progress = Callable[[int, int], None]


def write_image_folder(
    out: Path,
    count: int,
    size: tuple[int, int] | None,
    classes: int,
    seed: int = 0,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Write `count` JPEGs spread evenly over `classes` folders under `out`; return a summary.

    `size` is (width, height) for every image, or None for ImageNet-like sizes drawn per image.
    Image i depends only on (seed, i), so the bytes are the same for any `workers` (default: all
    CPU cores). `progress(done, total)` is called as images complete.
    """
    _check_request(count, size, classes, seed, workers)
    out = ensure_writable_dir(Path(out))
    for label in range(classes):
        (out / _class_dir(label)).mkdir(exist_ok=True)
    write = partial(_write_image, out=out, classes=classes, size=size, seed=seed)
    total_bytes = 0
    for done, n_bytes in enumerate(_run(write, count, workers or usable_cores()), start=1):
        total_bytes += n_bytes
        if progress is not None:
            progress(done, count)
    return {
        "images": count,
        "classes": classes,
        "bytes": total_bytes,
        "mean_kb": round(total_bytes / count / 1000, 1),
        "out": str(out),
    }


def _check_request(
    count: int, size: tuple[int, int] | None, classes: int, seed: int, workers: int | None
) -> None:
    """Raise a GpulabError naming the first impossible argument and the fix."""
    if count < 1:
        raise GpulabError(f"count must be at least 1 (got {count}); pass --count 1 or more")
    if classes < 1:
        raise GpulabError(f"classes must be at least 1 (got {classes}); pass --classes 1 or more")
    if classes > count:
        raise GpulabError(f"classes ({classes}) exceeds count ({count}); pass --count >= --classes")
    if size is not None and not all(MIN_SIDE_PX <= side <= MAX_SIDE_PX for side in size):
        raise GpulabError(
            f"image size {size[0]}x{size[1]} is out of range; "
            f"pass sides between {MIN_SIDE_PX} and {MAX_SIDE_PX} px"
        )
    if seed < 0:
        raise GpulabError(f"seed must be 0 or more (got {seed}); pass --seed 0 or more")
    if workers is not None and workers < 1:
        raise GpulabError(f"workers must be at least 1 (got {workers}); pass --workers 1 or more")


def _run(write: Callable[[int], int], count: int, workers: int) -> Iterator[int]:
    """`write(index)` for every index, results in index order: in this process or a pool."""
    workers = min(workers, count)
    if workers == 1:
        yield from map(write, range(count))
        return
    chunk = max(1, min(16, count // (4 * workers)))  # few round trips, yet progress keeps moving
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(write, range(count), chunksize=chunk)


def _write_image(
    index: int, out: Path, classes: int, size: tuple[int, int] | None, seed: int
) -> int:
    """Render, encode and atomically write image `index`; return its size in bytes."""
    data = jpeg_bytes(synthetic_image(index, classes, size, seed))
    path = out / _class_dir(index % classes) / f"img_{index:07d}.jpg"
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def _class_dir(label: int) -> str:
    return f"class_{label:03d}"


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def synthetic_image(
    index: int, classes: int, size: tuple[int, int] | None, seed: int = 0
) -> Image.Image:
    """Image `index`, of class `index % classes`: the same pixels for the same (seed, index).

    The class sets the hue, the stripe angle and the usual shape kind; everything else is drawn.
    """
    rng = np.random.default_rng([seed, index])
    label = index % classes
    width, height = size or _imagenet_size(rng)
    hue = label / classes + rng.normal(0.0, 0.02)
    angle = math.pi * ((label * GOLDEN) % 1.0) + rng.normal(0.0, 0.1)
    pixels = _gradient(rng, width, height, hue) + _blobs(rng, width, height)
    pixels += _stripes(rng, width, height, angle)
    img = Image.fromarray(_to_uint8(pixels))
    _draw_shapes(ImageDraw.Draw(img), rng, width, height, hue, shape=label % 3)
    detail = rng.lognormal(0.0, 0.3)  # some photos are smoother than others
    noise = _noise(rng, width, height, OCTAVE_NOISE * detail, FINE_NOISE * detail)
    return Image.fromarray(_to_uint8(np.asarray(img, np.float32) + noise))


def _imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): longer side 500 px for most images, else 300-499, as in ImageNet."""
    longer = 500 if rng.random() < 0.75 else int(rng.integers(300, 500))
    ratios, weights = zip(*ASPECTS)
    aspect = ratios[rng.choice(len(ratios), p=weights)]
    if aspect >= 1:
        return longer, round(longer / aspect)
    return round(longer * aspect), longer


def _colour(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB in 0-255 levels from hue (wraps at 1), saturation and value in [0, 1]."""
    rgb = colorsys.hsv_to_rgb(hue % 1.0, min(saturation, 1.0), min(value, 1.0))
    return 255.0 * np.array(rgb, np.float32)


def _gradient(rng: np.random.Generator, width: int, height: int, hue: float) -> np.ndarray:
    """A linear blend between two shades of the class hue along a random direction."""
    start = _colour(hue, rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.95))
    end = _colour(hue + rng.normal(0.0, 0.05), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.7))
    theta = rng.uniform(0.0, 2 * math.pi)
    t = _ramp(width, height, theta)
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    return start + t[..., None] * (end - start)


def _ramp(width: int, height: int, theta: float) -> np.ndarray:
    """Distance along direction `theta` for every pixel, shape (height, width)."""
    x = np.arange(width, dtype=np.float32) * math.cos(theta)
    y = np.arange(height, dtype=np.float32)[:, None] * math.sin(theta)
    return x + y


def _blobs(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Soft colour patches: a coarse random grid upsampled smoothly to full size."""
    grid = rng.normal(0.0, 25.0, size=(3, 4, 3))
    return _upsample(grid, width, height)


def _stripes(rng: np.random.Generator, width: int, height: int, angle: float) -> np.ndarray:
    """Grey sinusoidal stripes along the class angle, period 6-24 px: a learnable texture."""
    period_px = rng.uniform(6.0, 24.0)
    phase = _ramp(width, height, angle) * (2 * math.pi / period_px) + rng.uniform(0, 2 * math.pi)
    return (rng.uniform(6.0, 16.0) * np.sin(phase))[..., None]


def _draw_shapes(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    width: int,
    height: int,
    hue: float,
    shape: int,
) -> None:
    """6-16 shapes, mostly the class's kind (0 ellipse, 1 polygon, 2 thick line), some any hue."""
    for _ in range(int(rng.integers(6, 17))):
        kind = shape if rng.random() < 0.75 else int(rng.integers(3))
        shade = hue + rng.normal(0.0, 0.04) if rng.random() < 0.7 else rng.random()
        fill = tuple(int(c) for c in _colour(shade, rng.uniform(0.3, 1), rng.uniform(0.3, 1)))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.05, 0.3) * min(width, height)
        if kind == 0:
            draw.ellipse(_ellipse_box(rng, cx, cy, radius), fill=fill)
        elif kind == 1:
            draw.polygon(_polygon(rng, cx, cy, radius), fill=fill)
        else:
            draw.line(_polygon(rng, cx, cy, 2 * radius)[:2], fill=fill, width=int(radius / 4) + 1)


def _ellipse_box(
    rng: np.random.Generator, cx: float, cy: float, radius: float
) -> tuple[float, float, float, float]:
    rx, ry = radius * rng.uniform(0.5, 1.5, size=2)
    return cx - rx, cy - ry, cx + rx, cy + ry


def _polygon(
    rng: np.random.Generator, cx: float, cy: float, radius: float
) -> list[tuple[float, float]]:
    """3-7 vertices at random angles around (cx, cy), sorted so the outline does not cross."""
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(3, 8))))
    radii = radius * rng.uniform(0.5, 1.0, size=angles.size)
    return list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))


def _noise(
    rng: np.random.Generator, width: int, height: int, octave_std: float, fine_std: float
) -> np.ndarray:
    """Grey multi-scale noise, shape (height, width, 1): octaves from 1/16 scale to full.

    A pyramid: each level is the coarser one upsampled plus fresh noise, so one full-size resize
    does for all octaves. Equal strength per coarse octave gives the 1/f spectrum of photos; the
    stronger full-resolution octave is the grain and fine texture that sets the JPEG size.
    """
    shapes = [(-(-height // octave), -(-width // octave)) for octave in (16, 8, 4, 2, 1)]
    stds = [octave_std] * 4 + [fine_std]
    total = np.zeros(shapes[0], np.float32)
    for shape, std in zip(shapes, stds):
        total = _resize_grey(total, shape) + std * rng.standard_normal(shape, np.float32)
    return total[..., None]


def _resize_grey(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float32 (h, w) array to `shape` = (height, width)."""
    big = Image.fromarray(grey).resize(shape[::-1], Image.Resampling.BICUBIC)
    return np.asarray(big, np.float32)


def _upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic upsampling of a small (h, w, 3) array of levels around 0 to (height, width, 3)."""
    small = Image.fromarray(np.clip(grid + 128.0, 0, 255).astype(np.uint8))
    big = small.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(big, np.float32) - 128.0


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels, 0, 255).astype(np.uint8)
