"""The storage probe on tiny files in tmp_path: result shape, cleanup, checks, space, fallbacks."""

import errno
import json
import math
import mmap
import os
from types import SimpleNamespace

import pytest

from gpulab.probe import storage
from gpulab.probe.storage import filesystem_of, probe_storage
from gpulab.runtime.errors import GpulabError

MiB = 1024**2
KEYS = {
    "dir",
    "filesystem",
    "file_bytes",
    "cache_bypass",
    "write_fsync_gbps",
    "seq_read_cold_gbps",
    "seq_read_warm_gbps",
    "random_4k",
    "concurrent",
    "notes",
}


def _left_behind(folder):
    return list(folder.glob(".gpulab-probe-*"))


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _free_space(monkeypatch, free_bytes: int) -> None:
    usage = SimpleNamespace(total=10 * free_bytes, used=9 * free_bytes, free=free_bytes)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: usage)


def _check_result(result, tmp_path, file_bytes, max_readers):
    assert set(result) == KEYS
    json.dumps(result)
    assert result["dir"] == str(tmp_path.resolve())
    assert result["filesystem"] == filesystem_of(tmp_path)
    assert result["file_bytes"] == file_bytes
    assert result["cache_bypass"] in {"O_DIRECT", "fadvise DONTNEED", "none"}
    assert _positive(result["write_fsync_gbps"])
    for key in ("seq_read_cold_gbps", "seq_read_warm_gbps"):
        spread = result[key]
        assert set(spread) == {"median", "min", "max"}
        assert all(_positive(v) for v in spread.values())
        assert spread["min"] <= spread["median"] <= spread["max"]
    random_4k = result["random_4k"]
    assert set(random_4k) == {"reads", "iops_median", "mbps_median"}
    assert isinstance(random_4k["reads"], int) and 0 < random_4k["reads"] <= file_bytes // 4096
    assert _positive(random_4k["iops_median"]) and _positive(random_4k["mbps_median"])
    rows = {(row["readers"], row["mode"]) for row in result["concurrent"]}
    counts = storage._reader_counts(max_readers)
    assert rows == {(n, mode) for n in counts for mode in ("bypass", "buffered")}
    for row in result["concurrent"]:
        assert set(row) == {"readers", "mode", "aggregate_gbps"}
        assert _positive(row["aggregate_gbps"])
    assert all(isinstance(note, str) for note in result["notes"])


def test_result_shape_and_cleanup(tmp_path):
    heard = []
    result = probe_storage(tmp_path, 2 * MiB, max_readers=3, progress=heard.append, repeats=2)
    _check_result(result, tmp_path, 2 * MiB, 3)
    rows = {(row["readers"], row["mode"]) for row in result["concurrent"]}
    assert rows == {(n, mode) for n in (1, 2, 3) for mode in ("bypass", "buffered")}
    assert len(result["concurrent"]) == 6
    assert heard and all(line.startswith("storage: ") for line in heard)
    assert _left_behind(tmp_path) == []


def test_reader_counts_double_up_to_the_maximum():
    assert storage._reader_counts(1) == [1]
    assert storage._reader_counts(4) == [1, 2, 4]
    assert storage._reader_counts(6) == [1, 2, 4, 6]


def test_size_rounds_down_to_whole_blocks(tmp_path):
    result = probe_storage(tmp_path, 256 * 1024 + 100, max_readers=1, repeats=1)
    assert result["file_bytes"] == 256 * 1024
    assert _left_behind(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("disk fell off"), KeyboardInterrupt()])
def test_file_removed_after_an_error(tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        assert len(_left_behind(tmp_path)) == 1  # the test file exists while measuring
        raise error

    monkeypatch.setattr(storage, "_measure_random_4k", fail)
    with pytest.raises(type(error)):
        probe_storage(tmp_path, 1 * MiB, max_readers=1, repeats=1)
    assert _left_behind(tmp_path) == []


def test_file_removed_when_writing_fails(tmp_path, monkeypatch):
    def fail(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "_write_all", fail)
    with pytest.raises(OSError):
        probe_storage(tmp_path, 1 * MiB, max_readers=1, repeats=1)
    assert _left_behind(tmp_path) == []


def test_missing_dir(tmp_path):
    with pytest.raises(GpulabError, match="does not exist"):
        probe_storage(tmp_path / "nope", 1 * MiB, max_readers=1)


def test_regular_file_is_not_a_folder(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with pytest.raises(GpulabError, match="not a folder"):
        probe_storage(plain, 1 * MiB, max_readers=1)
    with pytest.raises(GpulabError):
        probe_storage(plain / "below", 1 * MiB, max_readers=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(GpulabError, match="not writable"):
            probe_storage(locked, 1 * MiB, max_readers=1)
    finally:
        locked.chmod(0o700)


def test_bad_arguments(tmp_path):
    with pytest.raises(GpulabError, match="max-readers"):
        probe_storage(tmp_path, 1 * MiB, max_readers=0)
    with pytest.raises(GpulabError, match="too small"):
        probe_storage(tmp_path, 100, max_readers=1)


def test_short_space_shrinks_the_file(tmp_path, monkeypatch):
    _free_space(monkeypatch, 8 * MiB + 64 * MiB + 1 * MiB)
    result = probe_storage(tmp_path, 32 * MiB, max_readers=1, repeats=1)
    assert result["file_bytes"] == 8 * MiB
    assert any("96 MiB" in note and "8 MiB" in note for note in result["notes"])
    assert _left_behind(tmp_path) == []


def test_far_too_little_space(tmp_path, monkeypatch):
    _free_space(monkeypatch, 10 * MiB)
    with pytest.raises(GpulabError, match="72 MiB"):
        probe_storage(tmp_path, 256 * MiB, max_readers=1)
    assert _left_behind(tmp_path) == []


def test_small_file_kept_when_it_fits(tmp_path, monkeypatch):
    _free_space(monkeypatch, 65 * MiB + 512 * 1024)
    result = probe_storage(tmp_path, 1 * MiB, max_readers=1, repeats=1)
    assert result["file_bytes"] == 1 * MiB
    assert not [note for note in result["notes"] if "test used" in note]


def test_fadvise_fallback_when_o_direct_is_refused(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args, **kwargs):
        if flags & storage.os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    if not hasattr(os, "O_DIRECT") or not hasattr(os, "posix_fadvise"):
        pytest.skip("needs Linux's O_DIRECT and posix_fadvise")
    monkeypatch.setattr(os, "open", refuse_direct)
    monkeypatch.setattr(storage, "resident_fraction", lambda paths: 0.0)  # tmpfs would keep them
    result = probe_storage(tmp_path, 1 * MiB, max_readers=2, repeats=1)
    _check_result(result, tmp_path, 1 * MiB, 2)
    assert result["cache_bypass"] == "fadvise DONTNEED"
    assert any("posix_fadvise" in note for note in result["notes"])
    assert _left_behind(tmp_path) == []


def test_no_bypass_at_all(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    result = probe_storage(tmp_path, 1 * MiB, max_readers=1, repeats=1)
    assert result["cache_bypass"] == "none"
    assert any("page cache" in note for note in result["notes"])
    assert _left_behind(tmp_path) == []


def test_a_page_cache_that_keeps_dropped_pages_is_no_bypass(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    monkeypatch.setattr(storage, "drop_page_cache", lambda path: None)  # advice not taken
    result = probe_storage(tmp_path, 1 * MiB, max_readers=1, repeats=1)
    assert result["cache_bypass"] == "none"
    assert any("may be served from the page cache" in note for note in result["notes"])


def test_memory_filesystem_noted(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "filesystem_of", lambda path: "tmpfs")
    result = probe_storage(tmp_path, 1 * MiB, max_readers=1, repeats=1)
    assert result["filesystem"] == "tmpfs"
    assert any("memory" in note for note in result["notes"])


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
server:/export /data nfs4 rw 0 0
/dev/sdb1 /data/scratch xfs rw 0 0
/dev/sdc1 /mnt/my\\040disk btrfs rw 0 0
/dev/sda1 /srv ext4 rw 0 0
overlay /srv overlay rw 0 0
short line
"""


@pytest.mark.parametrize(
    "where, fs_type",
    [
        ("/", "ext4"),
        ("/home/me", "ext4"),
        ("/tmp/x", "tmpfs"),
        ("/data", "nfs4"),
        ("/data/scratch/run", "xfs"),  # the longest mount point holding the path
        ("/datastore", "ext4"),  # /data is no prefix of /datastore
        ("/mnt/my disk/a", "btrfs"),  # octal escapes in the table
        ("/srv/www", "overlay"),  # mounted on top of the same point: the last one
    ],
)
def test_filesystem_of_reads_the_mount_table(tmp_path, where, fs_type):
    (tmp_path / "mounts").write_text(MOUNTS)
    assert filesystem_of(where, tmp_path / "mounts") == fs_type


def test_filesystem_of_here(tmp_path):
    assert filesystem_of(tmp_path, tmp_path / "no-such-table") == "unknown"
    if os.path.exists("/proc/mounts"):  # Linux: the real table names this folder's file system
        assert filesystem_of(tmp_path) not in ("unknown", "")


def test_resident_pages_counts_what_the_page_cache_holds(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 * mmap.PAGESIZE + 1))
    path.read_bytes()  # every page just read is in memory on any file system
    assert storage.resident_pages(path) == (4, 4)
    assert storage.resident_fraction([path]) == 1.0
    (tmp_path / "empty").write_bytes(b"")
    assert storage.resident_pages(tmp_path / "empty") == (0, 0)


def test_a_drop_the_os_ignored_does_not_count_as_cold(tmp_path, monkeypatch):
    from gpulab.bench import diagnose

    files = [tmp_path / f"{i}.jpg" for i in range(3)]
    for f in files:
        f.write_bytes(os.urandom(2 * mmap.PAGESIZE))
        f.read_bytes()
    monkeypatch.setattr(storage, "drop_page_cache", lambda path: None)  # advice not taken
    assert diagnose.drop_cache(files) is False  # every page still in memory
    monkeypatch.setattr(storage, "resident_fraction", lambda paths: 0.01)
    assert diagnose.drop_cache(files) is True
    monkeypatch.setattr(storage, "resident_fraction", lambda paths: None)  # cannot be told
    assert diagnose.drop_cache(files) is True
