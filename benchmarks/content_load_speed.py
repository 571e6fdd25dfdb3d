"""Loading a folder of photos for feed-forward style training: plain loader vs gpulab's.

Both produce the same thing, batches of square content crops as float tensors in [0, 1] (shorter
side scaled to --size, centre crop), from the same folder of large JPEG photos:
  plain   the tutorial structure: ImageFolder-style PIL open + convert("RGB") + Resize +
          CenterCrop + ToTensor, one DataLoader with --workers processes;
  gpulab  `gpulab train style --set images=DIR`'s own dataset and loader (open_image decodes each
          JPEG at the smallest DCT scale that keeps --size pixels, then the same crop), with the
          same number of workers.
A second pair of rows gives each loader its own default: the plain loader in the main process
(workers 0, as the previous gpulab style loader did) against gpulab's default worker count.

    PYTHONPATH=src python3 benchmarks/content_load_speed.py [--count 64] [--photo 4000x2800]
        [--size 256] [--batch 8] [--workers 2]

Prints a table, then one JSON object on its last line.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from gpulab.data.batches import LoaderBatches, loader_workers
from gpulab.data.samples import BUNDLED, bundled_photo
from gpulab.runtime.distributed import DistInfo
from gpulab.workloads.style.data import ContentImages, image_files

METHOD_VERSION = 1


def write_photos(folder: Path, count: int, width: int, height: int) -> None:
    """Large JPEGs (quality 90) made from the bundled photos: scaled up, shifted and flipped."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = bundled_photo(BUNDLED[i % len(BUNDLED)])
        img = photo.resize((width, height), Image.Resampling.BICUBIC)
        img = Image.fromarray(np.roll(np.asarray(img), int(rng.integers(width)), axis=1))
        if i % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(folder / f"photo_{i:05d}.jpg", quality=90)


class PlainFolder(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], size: int):
        self.files = files
        self.tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as img:
            return (self.tf(img.convert("RGB")),)


def rate(loader) -> float:
    """Images/s over one epoch, the workers' start-up included (both loaders pay it)."""
    t0 = time.perf_counter()
    n = sum(len(batch[0]) for batch in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--photo", default="4000x2800", help="WxH of the generated photos")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    width, height = map(int, args.photo.lower().split("x"))
    cpu, one = torch.device("cpu"), DistInfo(1, 0, 0, None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        write_photos(folder, args.count, width, height)
        files = image_files(folder)
        mb = sum(f.stat().st_size for f in files) / 2**20

        def plain(workers: int) -> float:
            loader = torch.utils.data.DataLoader(
                PlainFolder(files, args.size), args.batch, shuffle=True, num_workers=workers
            )
            return rate(loader)

        def gpulab(workers: int) -> float:
            data = ContentImages(args.size, files=files)
            batches = LoaderBatches(data, args.batch, one, 0, cpu, num_workers=workers)
            return rate(batches.epoch(0))

        default = loader_workers(None)
        rows = {
            f"plain, {args.workers} workers": plain(args.workers),
            f"gpulab, {args.workers} workers": gpulab(args.workers),
            "plain, main process": plain(0),
            f"gpulab, default ({default} workers)": gpulab(default),
        }
    names = list(rows)
    ratios = {
        "same_workers": rows[names[1]] / rows[names[0]],
        "defaults": rows[names[3]] / rows[names[2]],
    }
    print(
        f"{args.count} JPEG photos {width}x{height} ({mb / args.count:.2f} MB each) -> "
        f"{args.size} px crops, batch {args.batch}"
    )
    for name, value in rows.items():
        print(f"  {name:<28} {value:7.1f} images/s")
    print(
        f"  gpulab / plain: {ratios['same_workers']:.2f}x with the same workers, "
        f"{ratios['defaults']:.2f}x with each one's default"
    )
    print(
        json.dumps(
            {
                "benchmark": "content_load_speed",
                "method_version": METHOD_VERSION,
                "photos": args.count,
                "photo": args.photo,
                "mb_per_photo": mb / args.count,
                "size": args.size,
                "images_per_s": rows,
                "ratios": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
