"""Shards: WebDataset-compatible tar files of encoded samples, with an index and a manifest.

A packed data set is a folder:

    manifest.json     format, version, kind, sample count, classes, and per shard: file name,
                      samples, bytes, sha256
    index.npz         one row per sample (arrays, not lists): shard, offset and size of its
                      tar members in that shard, label (-1 when there is none)
    shard-000000.tar  samples in order; a sample is a run of consecutive tar members sharing a
                      key, e.g. 000000042.jpg + 000000042.cls (the class index as text)

Any WebDataset reader can stream the tar files as they are; gpulab also reads single samples by
offset, which gives exact, resumable epoch orders (data/stream.py). See docs/shards.md.
"""

import errno
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gpulab.runtime.errors import GpulabError

FORMAT, VERSION = "gpulab-shards", 1
MANIFEST, INDEX = "manifest.json", "index.npz"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
BLOCK = 512  # tar's block size
# descriptors a ShardSet keeps open per process: reads move through a few shards at a time
# (the shuffle buffer), and a set of thousands must not run into the open-files limit (1024)
MAX_OPEN_SHARDS = 64


@dataclass
class Sample:
    key: str
    members: list[tuple[str, bytes]]  # (extension, bytes), e.g. ("jpg", b"...")
    label: int = -1


# -- writing ---------------------------------------------------------------------------------------


class _HashingFile:
    """A write-only file that hashes what passes through and knows its position."""

    def __init__(self, f):
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos


class _ShardWriter:
    """Fills shard-NNNNNN.tar files of about `shard_bytes` each, recording the index."""

    def __init__(self, folder: Path, shard_bytes: int):
        self.folder, self.shard_bytes = folder, shard_bytes
        self.shards: list[dict] = []
        self.rows: list[tuple[int, int, int, int]] = []  # shard, offset, size, label
        self.tar = None

    def add(self, sample: Sample) -> None:
        if self.tar is None or self.out.tell() >= self.shard_bytes:
            self._next_shard()
        start = self.out.tell()
        for ext, data in sample.members:
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self.tar.addfile(info, io.BytesIO(data))
        self.rows.append((len(self.shards) - 1, start, self.out.tell() - start, sample.label))
        self.shards[-1]["samples"] += 1

    def _next_shard(self) -> None:
        self._close_shard()
        name = f"shard-{len(self.shards):06d}.tar"
        self.file = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _close_shard
        self.out = _HashingFile(self.file)
        self.tar = tarfile.open(  # noqa: SIM115 - closed in _close_shard
            fileobj=self.out, mode="w", format=tarfile.USTAR_FORMAT
        )
        self.shards.append({"name": name, "samples": 0})

    def _close_shard(self) -> None:
        if self.tar is None:
            return
        self.tar.close()  # end-of-archive blocks; the file object stays open
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.shards[-1].update(bytes=self.out.tell(), sha256=self.out.sha.hexdigest())
        self.tar = None

    def close(self) -> None:
        self._close_shard()


def pack(
    samples: Iterator[Sample],
    dst: Path,
    kind: str,
    shard_mb: float = 256,
    meta: dict | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write `samples` as shards under `dst`, all at once: into a hidden sibling folder first,
    renamed to `dst` only when complete; on any error (a full disk included) nothing is left."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise GpulabError(f"{dst} is a file; give a folder for the shards")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise GpulabError(f"{dst} exists and is not empty; choose a new folder or pass --force")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise GpulabError(f"cannot write {dst}: {e.strerror}; choose a writable folder") from None
    writer = _ShardWriter(tmp, int(shard_mb * 2**20))
    try:
        for n, sample in enumerate(samples, 1):
            writer.add(sample)
            if progress:
                progress(n)
        writer.close()
        if not writer.rows:
            raise GpulabError("the source holds no samples; pass a folder or file with data")
        manifest = _write_index(tmp, writer, kind, meta or {})
        _replace_dir(tmp, dst)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise GpulabError(
                f"the disk under {dst} is full; free space (this set needs more than "
                f"{sum(s.get('bytes', 0) for s in writer.shards) / 2**20:.0f} MB) or pick another folder"
            ) from None
        raise GpulabError(f"cannot write {dst}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_index(folder: Path, writer: _ShardWriter, kind: str, meta: dict) -> dict:
    rows = np.array(writer.rows, dtype=np.int64)
    with open(folder / INDEX, "wb") as f:
        np.savez(
            f,
            shard=rows[:, 0].astype(np.int32),
            offset=rows[:, 1],
            size=rows[:, 2],
            label=rows[:, 3],
        )
        f.flush()
        os.fsync(f.fileno())
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "samples": len(rows),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "shards": writer.shards,
    }
    with open(folder / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def _replace_dir(tmp: Path, dst: Path) -> None:
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- sources ----------------------------------------------------------------------------------------


def image_folder_samples(
    src: Path, skip_bad: bool = False
) -> tuple[list[str], list[tuple[Path, int]], Callable]:
    """(classes, [(file, label)], a generator of Samples) for DIR/CLASS/IMAGE files."""
    from PIL import Image

    src = Path(src)
    if not src.exists():
        raise GpulabError(f"no such folder: {src}; pass an ImageFolder (DIR/CLASS/IMAGE.jpg)")
    if not src.is_dir():
        raise GpulabError(f"{src} is not a folder; pass an ImageFolder (DIR/CLASS/IMAGE.jpg)")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [
        (p, label)
        for label, c in enumerate(classes)
        for p in sorted((src / c).iterdir())
        if p.suffix.lower() in IMAGE_EXTS
    ]
    if not files:
        raise GpulabError(
            f"{src} holds no images in class sub-folders; lay it out as DIR/CLASS/IMAGE.jpg"
        )
    skipped = [0]

    def samples() -> Iterator[Sample]:
        key = 0
        for path, label in files:
            data = path.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
            except Exception as e:  # noqa: BLE001 - any unreadable image is handled the same way
                if not skip_bad:
                    raise GpulabError(
                        f"{path} is not a readable image ({e}); remove it or pass --set skip_bad=true"
                    ) from None
                skipped[0] += 1
                continue
            ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
            yield Sample(f"{key:09d}", [(ext, data), ("cls", str(label).encode())], label)
            key += 1

    samples.skipped = skipped
    return classes, files, samples


# -- reading ----------------------------------------------------------------------------------------


def read_manifest(dst: Path) -> dict:
    path = Path(dst) / MANIFEST
    if not path.is_file():
        raise GpulabError(f"{dst} has no {MANIFEST}; pack a data set with `gpulab data pack`")
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == FORMAT and isinstance(manifest.get("shards"), list)
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise GpulabError(f"{path} is not a gpulab shard manifest; pack the data again")
    if manifest["version"] > VERSION:
        raise GpulabError(f"{path} has format version {manifest['version']}; upgrade gpulab")
    return manifest


def is_packed(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def parse_members(buf: bytes, where: str) -> list[tuple[str, bytes]]:
    """The (name, data) tar members in `buf`, which holds whole records; errors name `where`."""
    out, pos = [], 0
    while pos < len(buf):
        header = buf[pos : pos + BLOCK]
        if len(header) < BLOCK:
            raise GpulabError(f"{where}: truncated in a tar header; repack the data")
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise GpulabError(f"{where}: corrupt tar header ({e}); repack the data") from None
        start = pos + BLOCK
        data = buf[start : start + info.size]
        if len(data) < info.size:
            raise GpulabError(f"{where}: truncated mid-record; repack the data")
        out.append((info.name, data))
        pos = start + -(-info.size // BLOCK) * BLOCK
    return out


class ShardSet:
    """A packed data set opened for reading: manifest, index arrays, and reads by sample."""

    def __init__(self, dst: Path):
        self.dst = Path(dst)
        self.manifest = read_manifest(self.dst)
        self.paths = [self.dst / s["name"] for s in self.manifest["shards"]]
        for path, s in zip(self.paths, self.manifest["shards"]):
            if not path.is_file():
                raise GpulabError(f"{path} is missing; the manifest lists it: repack or restore it")
            if path.stat().st_size != s["bytes"]:
                raise GpulabError(
                    f"{path} is truncated or changed: {path.stat().st_size:,} bytes, the "
                    f"manifest says {s['bytes']:,}; run `gpulab data verify` and repack"
                )
        try:
            with np.load(self.dst / INDEX) as z:
                self.shard, self.offset = z["shard"], z["offset"]
                self.size, self.label = z["size"], z["label"]
        except (OSError, KeyError, ValueError) as e:
            raise GpulabError(f"{self.dst / INDEX} is unreadable ({e}); repack the data") from None
        counts = np.bincount(self.shard, minlength=len(self.paths))
        if len(self.shard) != self.manifest["samples"] or list(counts) != [
            s["samples"] for s in self.manifest["shards"]
        ]:
            raise GpulabError(f"{self.dst}: the index does not match the manifest; repack the data")
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    def where(self, i: int) -> str:
        return f"{self.paths[self.shard[i]].name} at offset {int(self.offset[i])}"

    def read(self, i: int) -> dict[str, bytes]:
        """Sample i's members by extension, e.g. {'jpg': b'...', 'cls': b'3'}."""
        fd = self._fd(int(self.shard[i]))
        buf = os.pread(fd, int(self.size[i]), int(self.offset[i]))
        members = parse_members(
            buf, f"{self.paths[self.shard[i]]} (sample {i}, offset {int(self.offset[i])})"
        )
        return {name.rsplit(".", 1)[-1]: data for name, data in members}

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            if len(self._fds) >= MAX_OPEN_SHARDS:  # the longest open one goes first
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return self._fds[shard]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        if getattr(self, "_fds", None):
            self.close()


def verify(dst: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Check sizes, checksums and every record of every shard against the manifest and index."""
    shards = ShardSet(dst)  # sizes, index vs manifest
    for k, (path, s) in enumerate(zip(shards.paths, shards.manifest["shards"])):
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        if sha.hexdigest() != s["sha256"]:
            raise GpulabError(
                f"{path}: checksum mismatch (the file changed since packing); repack it"
            )
        ids = np.flatnonzero(shards.shard == k)
        expected = 0
        for i in ids:
            if shards.offset[i] != expected:
                raise GpulabError(
                    f"{path}: the index skips bytes before sample {i}; repack the data"
                )
            members = shards.read(int(i))
            if not members:
                raise GpulabError(f"{path}: sample {i} has no members; repack the data")
            expected = int(shards.offset[i] + shards.size[i])
        if progress:
            progress(k + 1)
    shards.close()
    m = shards.manifest
    return {
        "shards": len(m["shards"]),
        "samples": m["samples"],
        "bytes": sum(s["bytes"] for s in m["shards"]),
        "kind": m["kind"],
    }
