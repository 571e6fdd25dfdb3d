"""Content images for feed-forward style training: a user's folder, or crops of bundled photos."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gpulab.data import LoaderBatches
from gpulab.data.batches import loader_workers
from gpulab.data.images import open_image, resize_longer_side, to_tensor
from gpulab.data.samples import BUNDLED, bundled_photo, generated_painting
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError
from gpulab.workloads.style.model import STYLE_LAYERS, VGGFeatures, gram

if TYPE_CHECKING:
    from gpulab.workloads.style.optimize import StyleLoss

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the central size x size square."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize(
        (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR
    )
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def bundled_crops(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Deterministic random crops (scale 0.3-1 of the shorter side) and flips of the bundled photos."""
    rng = np.random.default_rng(seed)
    photos = [bundled_photo(name) for name in BUNDLED]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        crops.append(
            crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop
        )
    return crops


def image_files(folder: Path, what: str = "images") -> list[Path]:
    """Image files under `folder` (recursively), or an error naming the option (`what`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GpulabError(f"{what} {folder} is not a folder; pass a folder of images")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise GpulabError(f"{what} {folder} holds no .jpg/.png images; add some")
    return files


class ContentImages(Dataset):
    """Square crops as (3, size, size) tensors in [0, 1]: from files, or from images in memory."""

    def __init__(
        self, size: int, files: list[Path] | None = None, images: list[Image.Image] | None = None
    ):
        self.size, self.files, self.images = size, files, images

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        if self.files is None:
            img = self.images[i]
        else:
            img = open_image(self.files[i], at_least=self.size)
        return (to_tensor(center_crop(img, self.size))[0],)


@dataclass
class StyleData:
    train: LoaderBatches
    vgg: VGGFeatures  # frozen, on the training device: part of the loss
    style_grams: dict[str, torch.Tensor]
    eval_batch: torch.Tensor  # fixed content crops for the periodic losses
    sample: Image.Image  # shown stylized in the run folder
    style_name: str
    loss_fn: "StyleLoss | None" = None  # the losses the workload builds on these features
    pretrained: bool = False  # whether the VGG19 had ImageNet weights


def build_style_data(cfg, vgg: VGGFeatures, device: torch.device, dist: DistInfo) -> StyleData:
    style_img = open_image(cfg.style) if cfg.style else generated_painting(cfg.size * 2)
    if cfg.images:
        dataset = ContentImages(cfg.size, files=image_files(Path(cfg.images)))
    else:
        dataset = ContentImages(cfg.size, images=bundled_crops(cfg.count, cfg.size, cfg.seed))
    vgg = vgg.to(device)
    style = to_tensor(resize_longer_side(style_img, cfg.size)).to(device)
    with torch.no_grad():
        grams = {k: gram(v) for k, v in vgg(style).items() if k in STYLE_LAYERS}
    eval_batch = torch.stack([dataset[i][0] for i in range(min(len(dataset), 4))]).to(device)
    # files are decoded in worker processes; bundled crops are already in memory
    workers = loader_workers(cfg.workers) if cfg.images else 0
    train = LoaderBatches(dataset, cfg.batch_size, dist, cfg.seed, device, num_workers=workers)
    return StyleData(
        train, vgg, grams, eval_batch, bundled_photo("china"), cfg.style or "generated:painting"
    )
