"""Decode and augment encoded images, on CPU workers or on the GPU, with the same random crops.

Crop and flip parameters come from a generator seeded per batch and are drawn in sample order
from each image's size alone, so the CPU and GPU paths (and any number of workers) augment a
given epoch identically. Output is uint8 (B, 3, S, S); `normalize` turns it into the float,
ImageNet-normalised input of the model on the device, where it costs a quarter of the
host→device bytes of float32.
"""

import functools
import math
import warnings

import numpy as np
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still work,
# and the device images' torchvision predates the note.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding", category=DeprecationWarning
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecodeError(Exception):
    pass


def batch_rng(seed: int, epoch: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, row])


def decode_cpu(data: bytes) -> torch.Tensor:
    """(3, H, W) uint8 RGB from JPEG/PNG bytes (libjpeg-turbo / libpng through torchvision)."""
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return torchvision.io.decode_image(raw, mode=torchvision.io.ImageReadMode.RGB)
    except RuntimeError as e:
        raise DecodeError(str(e).splitlines()[0]) from None


def decode_gpu(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEGs decoded in one batched nvJPEG call on `device`; a non-JPEG or damaged file raises
    DecodeError naming its position in the batch."""
    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    mode = torchvision.io.ImageReadMode.RGB
    try:
        return torchvision.io.decode_jpeg(raws, mode=mode, device=device)
    except RuntimeError:
        pass
    out = []
    for i, raw in enumerate(raws):  # find the culprit; decode the rest one by one
        try:
            out.append(torchvision.io.decode_jpeg(raw, mode=mode, device=device))
        except RuntimeError as e:
            raise DecodeError(f"item {i}: {str(e).splitlines()[0]}") from None
    return out


def random_resized_crop(
    rng: np.random.Generator, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w): torchvision's RandomResizedCrop rule, drawn from `rng`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fall back to a central crop
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """The box Resize(S*256/224) + CenterCrop(S) keeps: the central 224/256 of the shorter side."""
    side = max(1, int(round(min(height, width) * 224 / 256)))
    return (height - side) // 2, (width - side) // 2, side, side


def augment(
    images: list[torch.Tensor], rng: np.random.Generator, size: int, train: bool
) -> torch.Tensor:
    """(B, 3, size, size) uint8: random-resized crops and flips for training, centre crops else."""
    out = []
    for img in images:
        h, w = img.shape[-2:]
        top, left, ch, cw = random_resized_crop(rng, h, w) if train else center_crop(h, w)
        crop = TF.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
        if train and rng.random() < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out)


@functools.cache
def _normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(255 * mean, 1 / (255 * std)) on `device`, made once: copying a Python list to a GPU
    waits for all queued work, which on every batch would stall the overlap of input and step."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    scale = 1 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)
    return mean.to(device), scale.to(device)


def normalize(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 ImageNet-normalised, on x's device: one converting copy
    (into the model's memory format) and two in-place passes."""
    mean, scale = _normalize_constants(x.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(torch.float32, memory_format=fmt).sub_(mean).mul_(scale)
