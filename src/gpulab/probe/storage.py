"""Storage: how fast a folder's file system writes and reads one test file.

A test file of seeded random bytes (never zeros, so compressing or deduplicating file systems
must store every byte) is written and fsynced, then read sequentially cold and warm, at random
4 KiB offsets, and by 1, 2, 4, ... concurrent readers. "Cold" reads bypass the page cache with
O_DIRECT where the file system allows it, else drop the file's cached pages with
posix_fadvise(DONTNEED) first. GB/s are 1e9 bytes per second, MB/s 1e6. The test file is
removed whatever happens.
"""

import errno
import functools
import math
import mmap
import os
import re
import secrets
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gpulab.runtime.errors import GpulabError

KiB, MiB = 1024, 1024**2
GB = 1e9
BLOCK_BYTES = 4 * KiB  # O_DIRECT offsets and sizes are multiples of this
CHUNK_BYTES = 8 * MiB  # one write or read call
SPACE_MARGIN_BYTES = 64 * MiB  # left free beside the test file
MIN_FILE_BYTES = 8 * MiB  # the smallest file a lack of space may shrink the test to
RANDOM_READS_MAX = 4096
RANDOM_BUDGET_S = 1.0  # a random-read run stops early past this, for slow disks
START_TIMEOUT_S = 60.0  # concurrent readers wait at most this for each other to start
TEST_FILE_PREFIX = ".gpulab-probe-"
FADVISE = "fadvise DONTNEED"
STILL_CACHED_AT = 0.05  # past this share of a file's pages in memory, a drop did not take
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


def probe_storage(
    directory: Path,
    file_bytes: int,
    max_readers: int,
    progress: Callable[[str], None] | None = None,
    repeats: int = 3,
) -> dict:
    """Measure file access in `directory` with a `file_bytes` test file (whole 4 KiB blocks).

    The file shrinks (and a note says so) where free space is short. Each figure is the median of
    `repeats` runs; concurrent readers go 1, 2, 4, ... up to `max_readers`. `progress` hears a
    line before each phase. Returns a JSON-ready dict (see the module docstring for units).
    """
    directory = Path(directory)
    _check_arguments(file_bytes, max_readers, repeats)
    _check_directory(directory)
    notes: list[str] = []
    file_bytes = _fit_file_bytes(directory, file_bytes // BLOCK_BYTES * BLOCK_BYTES, notes)
    path = directory / f"{TEST_FILE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        return _measure(path, file_bytes, max_readers, repeats, progress or _quiet, notes)
    finally:
        path.unlink(missing_ok=True)


def filesystem_of(path: Path, mounts: Path = Path("/proc/mounts")) -> str:
    """File-system type (ext4, xfs, nfs4, tmpfs, ...) of the mount holding `path`, or "unknown".

    Reads the mount table (`mounts`, /proc/mounts) and takes the longest mount point that
    contains the resolved path; of equal mount points the last one listed (the one mounted on
    top) wins.
    """
    target = str(Path(path).resolve())
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return "unknown"
    best, fs_type = -1, "unknown"
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best:
            best, fs_type = len(mount), fields[2]
    return fs_type


def _quiet(text: str) -> None:
    pass


def _mib(nbytes: float) -> str:
    return f"{nbytes / MiB:.4g} MiB"


def _check_arguments(file_bytes: int, max_readers: int, repeats: int) -> None:
    if file_bytes < BLOCK_BYTES:
        raise GpulabError(
            f"storage test file of {file_bytes} bytes is too small; use at least 4 KiB"
        )
    if max_readers < 1:
        raise GpulabError(f"--max-readers {max_readers} must be at least 1")
    if repeats < 1:
        raise GpulabError(f"storage repeats {repeats} must be at least 1")


def _check_directory(directory: Path) -> None:
    """Raise a GpulabError unless `directory` is an existing folder we can create files in."""
    if not directory.exists():
        raise GpulabError(
            f"--dir {directory} does not exist; pass an existing folder to test its storage"
        )
    if not directory.is_dir():
        raise GpulabError(f"--dir {directory} is not a folder; pass an existing folder to test")
    try:
        with open(directory / f"{TEST_FILE_PREFIX}{secrets.token_hex(4)}", "xb") as f:
            Path(f.name).unlink()
    except OSError as e:
        raise GpulabError(
            f"--dir {directory} is not writable ({e.strerror}); pass a folder you can write to"
        ) from e


def _fit_file_bytes(directory: Path, file_bytes: int, notes: list[str]) -> int:
    """The test-file size that leaves SPACE_MARGIN_BYTES free: halved down to MIN_FILE_BYTES."""
    free = shutil.disk_usage(directory).free
    size = file_bytes
    while size > MIN_FILE_BYTES and size + SPACE_MARGIN_BYTES > free:
        size = max(MIN_FILE_BYTES, size // 2 // BLOCK_BYTES * BLOCK_BYTES)
    if size + SPACE_MARGIN_BYTES > free:
        raise GpulabError(
            f"--dir {directory} has {_mib(free)} free; the storage test needs at least "
            f"{_mib(size + SPACE_MARGIN_BYTES)} ({_mib(size)} test file + "
            f"{_mib(SPACE_MARGIN_BYTES)} margin); free some space or pass another --dir"
        )
    if size < file_bytes:
        notes.append(
            f"only {_mib(free)} free: a {_mib(file_bytes)} test file needs "
            f"{_mib(file_bytes + SPACE_MARGIN_BYTES)} with the {_mib(SPACE_MARGIN_BYTES)} margin, "
            f"so the test used {_mib(size)}"
        )
    return size


def _measure(
    path: Path,
    file_bytes: int,
    max_readers: int,
    repeats: int,
    say: Callable[[str], None],
    notes: list[str],
) -> dict:
    """Write the test file at `path`, run every measurement on it, and assemble the result."""
    say(f"storage: writing {_mib(file_bytes)} test file")
    write_gbps = _write_test_file(path, file_bytes)
    bypass = _choose_cache_bypass(path)
    fs_type = filesystem_of(path.parent)
    notes.extend(_bypass_notes(bypass, fs_type))
    reads = _measure_sequential(path, file_bytes, bypass, repeats, say)
    say(f"storage: {RANDOM_READS_MAX} random 4 KiB reads at most, cold ({bypass})")
    random_4k = _measure_random_4k(path, file_bytes, bypass, repeats)
    counts = _reader_counts(max_readers)
    concurrent = _measure_concurrent(path, file_bytes, bypass, counts, repeats, say)
    return {
        "dir": str(path.parent.resolve()),
        "filesystem": fs_type,
        "file_bytes": file_bytes,
        "cache_bypass": bypass,
        "write_fsync_gbps": write_gbps,
        **reads,
        "random_4k": random_4k,
        "concurrent": concurrent,
        "notes": notes,
    }


def _gbps(nbytes: float, seconds: float) -> float:
    return nbytes / max(seconds, 1e-9) / GB


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_test_file(path: Path, file_bytes: int) -> float:
    """Create `path` with `file_bytes` seeded random bytes, 8 MiB per write, then fsync.

    Returns GB/s of the write calls plus the fsync; generating the bytes is not timed, and the
    whole file is never held in memory.
    """
    rng = np.random.default_rng(0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        seconds = 0.0
        for offset in range(0, file_bytes, CHUNK_BYTES):
            chunk = rng.bytes(min(CHUNK_BYTES, file_bytes - offset))
            start = time.perf_counter()
            _write_all(fd, chunk)
            seconds += time.perf_counter() - start
        start = time.perf_counter()
        os.fsync(fd)
        seconds += time.perf_counter() - start
    finally:
        os.close(fd)
    return _gbps(file_bytes, seconds)


def _aligned_buffer(nbytes: int) -> mmap.mmap:
    """Anonymous memory (page-aligned, as O_DIRECT needs), touched so reads take no page faults."""
    buf = mmap.mmap(-1, nbytes)
    buf.write(bytes(nbytes))
    return buf


def _direct_read_works(path: Path) -> bool:
    """Whether `path` can be opened and read with O_DIRECT (EINVAL: the file system says no)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    try:
        with _aligned_buffer(BLOCK_BYTES) as buf:
            os.preadv(fd, [buf], 0)
        return True
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    finally:
        os.close(fd)


def _choose_cache_bypass(path: Path) -> str:
    """How cold reads avoid the page cache: "O_DIRECT", "fadvise DONTNEED" or "none"."""
    if hasattr(os, "O_DIRECT") and _direct_read_works(path):
        return "O_DIRECT"
    if hasattr(os, "posix_fadvise") and drop_cached_pages([path]):
        return FADVISE
    return "none"


def _bypass_notes(bypass: str, fs_type: str) -> list[str]:
    """Caveats on what the "cold" figures mean with this cache bypass on this file system."""
    if fs_type in MEMORY_FILESYSTEMS:
        return [f"{fs_type} keeps files in memory: cold figures are memory speeds, not a disk's"]
    if bypass == FADVISE:
        return [
            "O_DIRECT is not available here: cold reads first drop the file's cached pages "
            "(posix_fadvise DONTNEED); concurrent 'bypass' readers share the page cache, so only "
            "the first read of each block is cold"
        ]
    if bypass == "none":
        return [
            "neither O_DIRECT nor dropping cached pages (posix_fadvise) works here: cold "
            "figures may be served from the page cache"
        ]
    return []


def drop_page_cache(path: Path) -> None:
    """Flush `path` and ask the OS to forget its cached pages (no privileges needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_cached_pages(paths: list[Path]) -> bool:
    """Drop the files' cached pages; whether the OS took the advice (at most STILL_CACHED_AT of
    their pages still in memory, by mincore), or True where that cannot be told."""
    for path in paths:
        drop_page_cache(path)
    left = resident_fraction(paths)
    return left is None or left <= STILL_CACHED_AT


@functools.cache
def _libc_mapping_calls():
    """(mmap, mincore, munmap) from the C library with their signatures, or None."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_, mincore, munmap = libc.mmap, libc.mincore, libc.munmap
    except (OSError, AttributeError):
        return None
    mmap_.restype, mmap_.argtypes = ctypes.c_void_p, [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    ]  # fmt: skip
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return mmap_, mincore, munmap


def resident_pages(path: Path) -> tuple[int, int] | None:
    """(pages of `path` in the page cache, its pages), from mincore(2); None where the C library
    has no mincore. Mapping the file reads nothing, so asking changes nothing."""
    import ctypes

    size = path.stat().st_size
    if size == 0:
        return 0, 0
    calls = _libc_mapping_calls()
    if calls is None:
        return None
    mmap_, mincore, munmap = calls
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = mmap_(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = ctypes.create_string_buffer(pages)
            if mincore(addr, size, vec) != 0:
                return None
            resident = int(np.count_nonzero(np.frombuffer(vec.raw, np.uint8) & 1))
            return resident, pages
        finally:
            munmap(addr, size)
    finally:
        os.close(fd)


def resident_fraction(paths: list[Path]) -> float | None:
    """Share of the files' pages in the page cache (None where it cannot be told)."""
    cached = total = 0
    for path in paths:
        counts = resident_pages(path)
        if counts is None:
            return None
        cached, total = cached + counts[0], total + counts[1]
    return cached / total if total else 0.0


def _cold_direct(path: Path, bypass: str) -> bool:
    """Make the next read of `path` cold; True where it must open the file with O_DIRECT."""
    if bypass == FADVISE:
        drop_page_cache(path)
    return bypass == "O_DIRECT"


def _read_file(
    path: Path,
    file_bytes: int,
    direct: bool,
    buf: mmap.mmap,
    start: int = 0,
    end: int | None = None,
) -> None:
    """Read bytes [start, end) of `path` (all of it by default) in CHUNK_BYTES pieces into `buf`
    (os.preadv releases the GIL)."""
    end = file_bytes if end is None else end
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    view = memoryview(buf)
    try:
        for offset in range(start, end, CHUNK_BYTES):
            length = min(CHUNK_BYTES, end - offset)
            if os.preadv(fd, [view[:length]], offset) != length:
                raise OSError(errno.EIO, f"short read at byte {offset} of {path}")
    finally:
        view.release()
        os.close(fd)


def _timed_read_gbps(path: Path, file_bytes: int, direct: bool) -> float:
    """GB/s of one sequential read of the whole file (buffer allocated before the clock)."""
    with _aligned_buffer(CHUNK_BYTES) as buf:
        start = time.perf_counter()
        _read_file(path, file_bytes, direct, buf)
        return _gbps(file_bytes, time.perf_counter() - start)


def _measure_sequential(
    path: Path, file_bytes: int, bypass: str, repeats: int, say: Callable[[str], None]
) -> dict:
    """Sequential whole-file reads: cold (cache bypassed each run) and warm (after one read)."""
    say(f"storage: sequential reads, cold ({bypass})")
    cold = [_timed_read_gbps(path, file_bytes, _cold_direct(path, bypass)) for _ in range(repeats)]
    say("storage: sequential reads, warm page cache")
    _timed_read_gbps(path, file_bytes, direct=False)
    warm = [_timed_read_gbps(path, file_bytes, direct=False) for _ in range(repeats)]
    return {"seq_read_cold_gbps": _spread(cold), "seq_read_warm_gbps": _spread(warm)}


def _random_4k_run(path: Path, offsets: list[int], direct: bool) -> tuple[int, float]:
    """Read 4 KiB at each offset, stopping once RANDOM_BUDGET_S passes; (reads done, seconds)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        with _aligned_buffer(BLOCK_BYTES) as buf:
            done, start, seconds = 0, time.perf_counter(), 0.0
            for offset in offsets:
                os.preadv(fd, [buf], offset)
                done += 1
                seconds = time.perf_counter() - start
                if seconds > RANDOM_BUDGET_S:
                    break
    finally:
        os.close(fd)
    return done, seconds


def _measure_random_4k(path: Path, file_bytes: int, bypass: str, repeats: int) -> dict:
    """Cold reads of distinct seeded 4 KiB blocks: IOPS and MB/s, medians over `repeats` runs.

    At most RANDOM_READS_MAX reads; the first run may stop early on a slow disk, and later runs
    repeat the reads it managed, so every run does the same work.
    """
    blocks = file_bytes // BLOCK_BYTES
    picks = np.random.default_rng(1).choice(
        blocks, size=min(RANDOM_READS_MAX, blocks), replace=False
    )
    offsets = [int(block) * BLOCK_BYTES for block in picks]
    iops = []
    for _ in range(repeats):
        done, seconds = _random_4k_run(path, offsets, _cold_direct(path, bypass))
        offsets = offsets[:done]
        iops.append(done / max(seconds, 1e-9))
    median = statistics.median(iops)
    return {"reads": len(offsets), "iops_median": median, "mbps_median": median * BLOCK_BYTES / 1e6}


def _reader_counts(max_readers: int) -> list[int]:
    """1, 2, 4, ... below `max_readers`, then `max_readers` itself."""
    counts = [2**k for k in range(math.ceil(math.log2(max_readers)))]
    return [*counts, max_readers]


def _reader_thread(
    barrier: threading.Barrier, path: Path, file_bytes: int, direct: bool, part: tuple[int, int]
) -> None:
    try:
        buf = _aligned_buffer(CHUNK_BYTES)
    except BaseException:
        barrier.abort()
        raise
    with buf:
        barrier.wait()
        _read_file(path, file_bytes, direct, buf, *part)


def reader_parts(file_bytes: int, readers: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges splitting the file between `readers`, on CHUNK_BYTES boundaries
    (so O_DIRECT offsets stay aligned); together they cover the file exactly once."""
    chunks = math.ceil(file_bytes / CHUNK_BYTES)
    bounds = [min(file_bytes, (k * chunks // readers) * CHUNK_BYTES) for k in range(readers + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _concurrent_gbps(path: Path, file_bytes: int, readers: int, direct: bool) -> float:
    """Aggregate GB/s of `readers` threads reading their own part of the file at once, as
    loader workers read different samples of one data set; the file is read once in all, so the
    cost of the measurement does not grow with the number of readers.

    Threads start together at a barrier; the clock runs from the start to the last one's end.
    """
    barrier = threading.Barrier(readers + 1, timeout=START_TIMEOUT_S)
    with ThreadPoolExecutor(max_workers=readers) as pool:
        futures = [
            pool.submit(_reader_thread, barrier, path, file_bytes, direct, part)
            for part in reader_parts(file_bytes, readers)
        ]
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # a reader failed before the start; future.result() raises its error below
        except BaseException:
            barrier.abort()
            raise
        start = time.perf_counter()
        for future in futures:
            future.result()
        return _gbps(file_bytes, time.perf_counter() - start)


def _measure_concurrent(
    path: Path,
    file_bytes: int,
    bypass: str,
    counts: list[int],
    repeats: int,
    say: Callable[[str], None],
) -> list[dict]:
    """Rows of aggregate GB/s per reader count, cache bypassed then buffered (warm)."""
    rows = []
    for mode in ("bypass", "buffered"):
        if mode == "buffered":
            _timed_read_gbps(path, file_bytes, direct=False)  # warm the page cache
        for readers in counts:
            say(f"storage: {readers} concurrent reader(s), {mode}")
            rates = []
            for _ in range(repeats):
                direct = _cold_direct(path, bypass) if mode == "bypass" else False
                rates.append(_concurrent_gbps(path, file_bytes, readers, direct))
            rows.append(
                {"readers": readers, "mode": mode, "aggregate_gbps": statistics.median(rates)}
            )
    return rows
