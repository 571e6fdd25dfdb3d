"""Images that work offline: photos shipped inside scikit-learn, and a generated painting."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from gpulab.data.images import open_image

BUNDLED = ("china", "flower")  # scikit-learn's sample photos (427 x 640 JPEGs)


def bundled_photo_path(name: str) -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / f"{name}.jpg"


def bundled_photo(name: str = "china") -> Image.Image:
    return open_image(bundled_photo_path(name))


def generated_painting(size: int = 512, seed: int = 0) -> Image.Image:
    """A deterministic swirling, brush-stroked texture in a night-sky palette: a style image.

    Strokes follow a flow field made of a few random sinusoids; colour comes from a palette
    indexed by a second field; fine noise smeared along the strokes gives them texture.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    flow = sum(
        np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        for fx, fy, phase in rng.uniform([-3, -3, 0], [3, 3, 2 * np.pi], size=(5, 3))
    )
    bands = np.sin(12 * flow + 6 * x) * 0.5 + 0.5
    palette = np.array(
        [[16, 32, 84], [38, 84, 160], [96, 152, 208], [236, 204, 96], [250, 240, 200]],
        dtype=np.float64,
    )
    index = np.clip(bands * (len(palette) - 1), 0, len(palette) - 1.001)
    low, frac = index.astype(int), (index % 1)[..., None]
    rgb = palette[low] * (1 - frac) + palette[low + 1] * frac
    rgb += rng.normal(0, 18, size=rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(0.8)).filter(ImageFilter.DETAIL)
