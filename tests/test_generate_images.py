"""Synthetic ImageFolder generator: layout, sizes, bytes, determinism, learnable classes, bad input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gpulab.data.generate import write_image_folder
from gpulab.runtime.errors import GpulabError

SMALL = (64, 48)


def _files(out: Path) -> list[Path]:
    return sorted(out.glob("class_*/*.jpg"))


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def _file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in _files(out)}


def test_layout_summary_and_progress(tmp_path):
    calls = []
    summary = write_image_folder(
        tmp_path, count=10, size=SMALL, classes=4, workers=1, progress=lambda *a: calls.append(a)
    )
    dirs = sorted(p.name for p in tmp_path.iterdir())
    assert dirs == ["class_000", "class_001", "class_002", "class_003"]
    assert [len(list((tmp_path / d).iterdir())) for d in dirs] == [3, 3, 2, 2]
    assert calls == [(done, 10) for done in range(1, 11)]
    total = sum(p.stat().st_size for p in _files(tmp_path))
    assert summary == {
        "images": 10,
        "classes": 4,
        "bytes": total,
        "mean_kb": round(total / 10 / 1000, 1),
        "out": str(tmp_path),
    }


def test_given_size_gives_jpegs_of_that_size(tmp_path):
    write_image_folder(tmp_path, count=6, size=(80, 40), classes=2, workers=1)
    for path in _files(tmp_path):
        img = _open(path)
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (80, 40))


def test_default_size_varies_like_imagenet_and_files_are_photo_sized(tmp_path):
    summary = write_image_folder(tmp_path, count=8, size=None, classes=2, workers=1)
    sizes = [_open(p).size for p in _files(tmp_path)]
    assert len(set(sizes)) > 1
    assert all(300 <= max(s) <= 500 and min(s) >= 160 for s in sizes)
    assert 60 <= summary["mean_kb"] <= 200


def test_same_bytes_for_any_worker_count(tmp_path):
    write_image_folder(tmp_path / "one", count=6, size=None, classes=3, seed=7, workers=1)
    write_image_folder(tmp_path / "two", count=6, size=None, classes=3, seed=7, workers=2)
    assert _file_bytes(tmp_path / "one") == _file_bytes(tmp_path / "two")


def test_seeds_give_different_images(tmp_path):
    write_image_folder(tmp_path / "a", count=4, size=SMALL, classes=2, seed=0, workers=1)
    write_image_folder(tmp_path / "b", count=4, size=SMALL, classes=2, seed=1, workers=1)
    a, b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


def test_classes_are_learnable_from_mean_colour(tmp_path):
    """Nearest centroid on mean RGB, fit on the first half, scored on held-out images."""
    write_image_folder(tmp_path, count=80, size=SMALL, classes=4, workers=1)
    paths = _files(tmp_path)
    features = np.stack([np.asarray(_open(p), np.float32).mean(axis=(0, 1)) for p in paths])
    labels = np.array([int(p.parent.name.removeprefix("class_")) for p in paths])
    train = np.array([int(p.stem.removeprefix("img_")) < 40 for p in paths])
    centroids = np.stack([features[train & (labels == c)].mean(axis=0) for c in range(4)])
    distances = ((features[~train, None, :] - centroids) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=1) == labels[~train]).mean()
    assert accuracy >= 0.75  # chance is 0.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "count must be at least 1"),
        ({"classes": 0}, "classes must be at least 1"),
        ({"count": 3, "classes": 4}, "classes (4) exceeds count (3)"),
        ({"size": (15, 64)}, "image size 15x64 is out of range"),
        ({"size": (64, 4097)}, "image size 64x4097 is out of range"),
        ({"seed": -1}, "seed must be 0 or more"),
        ({"workers": 0}, "workers must be at least 1"),
    ],
)
def test_bad_input_names_the_problem(tmp_path, kwargs, message):
    args = {"count": 4, "size": SMALL, "classes": 2, "workers": 1} | kwargs
    with pytest.raises(GpulabError, match="pass") as info:
        write_image_folder(tmp_path / "out", **args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(GpulabError, match="not writable"):
        write_image_folder(blocker / "out", count=2, size=SMALL, classes=1, workers=1)


def test_cli_writes_an_image_folder(run_cli, tmp_path):
    r = run_cli(
        "data",
        "images",
        "--classes",
        "2",
        "--count",
        "12",
        "--size",
        "48x40",
        "--workers",
        "1",
        "--out",
        tmp_path / "imgs",
    )
    assert r.code == 0, r.err
    assert "wrote 12 JPEGs in 2 classes to" in r.out
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["class_000", "class_001"]
    r = run_cli("data", "images", "--classes", "2", "--size", "48", "--out", tmp_path / "x")
    assert r.code == 2 and "--size 48: pass WIDTHxHEIGHT" in r.err
