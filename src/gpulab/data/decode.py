"""Decode and augment encoded images, on CPU workers or on the GPU, with the same random crops.

Crop and flip parameters come from a generator seeded per batch and are drawn in sample order
from each image's size alone, so the CPU and GPU paths (and any number of workers) crop and flip
a given epoch identically. The CPU path decodes a JPEG whose crop spans at least twice the output
size at a reduced scale (a different filter, a few levels apart). Output is uint8 (B, 3, S, S);
`normalize` turns it into the float, ImageNet-normalised input of the model on the device, where
it costs a quarter of the host→device bytes of float32.
"""

import functools
import io
import math
import warnings

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from gpulab.runtime.errors import first_line

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they still work,
# and the device images' torchvision predates the note.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding", category=DeprecationWarning
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecodeError(Exception):
    pass


def sample_rng(seed: int, epoch: int, row: int, slot: int) -> np.random.Generator:
    """The augmentation draws of the sample at `slot` of global batch `row`: the same whichever
    rank, worker or decoder (CPU or GPU) handles it, so N processes augment as one does."""
    return np.random.default_rng([seed, epoch, row, slot])


def decode_cpu(data: bytes) -> torch.Tensor:
    """(3, H, W) uint8 RGB from JPEG/PNG bytes (libjpeg-turbo / libpng through torchvision)."""
    if not data:
        raise DecodeError("the image is empty (0 bytes)")
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return torchvision.io.decode_image(raw, mode=torchvision.io.ImageReadMode.RGB)
    except RuntimeError as e:
        raise DecodeError(first_line(e)) from None


def decode_gpu(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEGs decoded in one batched nvJPEG call on `device`; a non-JPEG or damaged file raises
    DecodeError naming its position in the batch."""
    for i, d in enumerate(datas):
        if not d:
            raise DecodeError(f"item {i}: the image is empty (0 bytes)")
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
            raise DecodeError(f"item {i}: {first_line(e)}") from None
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
    images: list[torch.Tensor], rngs: list[np.random.Generator], size: int, train: bool
) -> torch.Tensor:
    """(B, 3, size, size) uint8: random-resized crops and flips for training, centre crops else;
    image k's draws come from rngs[k]."""
    return torch.stack(
        [_crop(img, *_draw(rng, *img.shape[-2:], train), size) for img, rng in zip(images, rngs)]
    )


def _draw(rng: np.random.Generator, height: int, width: int, train: bool):
    """(box, flip) of one image, drawn from `rng` in the same order by every path."""
    if not train:
        return center_crop(height, width), False
    box = random_resized_crop(rng, height, width)
    return box, bool(rng.random() < 0.5)


def _crop(img: torch.Tensor, box, flip: bool, size: int) -> torch.Tensor:
    crop = TF.resized_crop(img, *box, [size, size], antialias=True)
    return crop.flip(-1) if flip else crop


def decode_augment_cpu(data: bytes, rng: np.random.Generator, size: int, train: bool):
    """(3, size, size) uint8: one image decoded, cropped and flipped as `augment` would, but a
    JPEG whose crop spans at least twice `size` is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling), which skips most of the work on a large photo."""
    dims = jpeg_size(data)
    if dims is None:  # not a JPEG (or a damaged header): decode to learn the size
        img = decode_cpu(data)
        return _crop(img, *_draw(rng, *img.shape[-2:], train), size)
    box, flip = _draw(rng, *dims, train)
    scale = dct_scale(box, size)
    if scale == 1:
        return _crop(decode_cpu(data), box, flip, size)
    img = _decode_reduced(data, scale)
    (height, width), (top, left, h, w) = img.shape[-2:], box
    ry, rx = height / dims[0], width / dims[1]  # ~1/scale: libjpeg rounds the sides up
    top, left = min(int(top * ry), height - 1), min(int(left * rx), width - 1)
    h, w = max(1, min(round(h * ry), height - top)), max(1, min(round(w * rx), width - left))
    return _crop(img, (top, left, h, w), flip, size)


def dct_scale(box, size: int) -> int:
    """The largest of 8, 4, 2 that keeps the crop `box` at least `size` on both sides, else 1."""
    for scale in (8, 4, 2):
        if min(box[2], box[3]) >= scale * size:
            return scale
    return 1


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, without decoding; None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return (height, width) if height and width else None
        i += 2 + length
    return None


def _decode_reduced(data: bytes, scale: int) -> torch.Tensor:
    """(3, H/scale, W/scale) uint8 RGB, decoded by libjpeg at that scale (Pillow's draft)."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            w, h = img.size
            img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
            pixels = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DecodeError(first_line(e)) from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


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
