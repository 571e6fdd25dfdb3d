"""Handwritten digits: scikit-learn's bundled set (embedded default) or MNIST IDX files.

IDX (the MNIST file format): a 4-byte magic number (0, 0, type code, number of dimensions),
one big-endian uint32 per dimension, then the values. MNIST uses unsigned bytes (type 0x08):
images (N, 28, 28), labels (N,). Files may be gzip-compressed (`.gz`).
"""

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpulab.data import TensorBatches
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError

SIDE = 28  # the network's input: MNIST's size; the bundled 8x8 digits are upscaled to it
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array, checked: magic number, dimensions, and length."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise GpulabError(f"{path} could not be read ({e}); pass an MNIST IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise GpulabError(
            f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'}); "
            "pass MNIST's train-images-idx3-ubyte and friends"
        )
    if raw[2] != 0x08:
        raise GpulabError(
            f"{path} holds IDX type 0x{raw[2]:02x}; MNIST files are unsigned bytes (0x08)"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise GpulabError(f"{path} is truncated (its header is incomplete); download it again")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    size = int(np.prod(dims))
    body = raw[4 + 4 * ndim :]
    if len(body) < size:
        raise GpulabError(
            f"{path} is truncated: {len(body):,} of {size:,} bytes of data; download it again"
        )
    return np.frombuffer(body[:size], dtype=np.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / name).is_file():
            return folder / name
    raise GpulabError(
        f"{folder} has no {stem}[.gz]; data needs a folder with MNIST's four IDX files"
    )


def read_mnist(folder: Path) -> dict[str, np.ndarray]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GpulabError(
            f"data={folder} is not a folder; pass the folder holding MNIST's IDX files"
        )
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in MNIST_FILES.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise GpulabError(
                f"{folder}: {part} images must be (N, rows, cols) and labels (N,); "
                f"found {images.shape} and {labels.shape}"
            )
        if len(images) != len(labels):
            raise GpulabError(
                f"{folder}: {len(images)} {part} images but {len(labels)} labels; "
                "the files do not belong together"
            )
        if labels.size and labels.max() > 9:
            raise GpulabError(f"{folder}: {part} labels go up to {labels.max()}; digits are 0..9")
    return arrays


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) grey values in [0, 255] -> (N, 1, 28, 28) floats in [0, 1]."""
    x = torch.tensor(np.asarray(images), dtype=torch.float32).div_(255.0).unsqueeze(1)
    if x.shape[-2:] != (SIDE, SIDE):
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return x


def bundled_digits(test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits (shipped inside the package), split per class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images,
        digits.target.astype(np.uint8),
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target,
    )
    return {"train_images": x_tr, "train_labels": y_tr, "test_images": x_te, "test_labels": y_te}


@dataclass
class DigitsData:
    train: TensorBatches
    x_test: torch.Tensor  # (N, 1, 28, 28) on the device
    y_test: torch.Tensor
    source: str


def build_digits_data(cfg, device: torch.device, dist: DistInfo) -> DigitsData:
    if cfg.data:
        arrays, source = read_mnist(Path(cfg.data)), str(cfg.data)
    else:
        arrays, source = bundled_digits(cfg.test_fraction, cfg.seed), "bundled:sklearn-digits"
    x, y = (
        to_input(arrays["train_images"]),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
    )
    if len(x) == 0 or len(arrays["test_images"]) == 0:
        raise GpulabError(f"{source} has no training or no test images; pass complete files")
    train = TensorBatches((x.to(device), y.to(device)), cfg.batch_size, dist, cfg.seed)
    x_test = to_input(arrays["test_images"]).to(device)
    y_test = torch.from_numpy(arrays["test_labels"].astype(np.int64)).to(device)
    return DigitsData(train, x_test, y_test, source)
