"""Packed shards: pack, verify, exact streaming orders, resume, ranks, memory, decode, bad input."""

import errno
import io
import json
import tarfile
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from gpulab.data import shards as sh
from gpulab.data.prefetch import DevicePrefetcher
from gpulab.data.stream import Decoding, ShardBatches, epoch_order
from gpulab.runtime import GpulabError
from gpulab.runtime.distributed import DistInfo

ONE = DistInfo(1, 0, 0, None)


def image_folder(root, classes=3, per_class=8, side=24, noise=False, gradient=False):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            if gradient:  # smooth ramps: decoders agree closely, a wrong crop or flip does not
                y, x = np.mgrid[0:side, 0 : side + i]
                pixels = np.stack([x * 255 / (side + i), y * 255 / side, 40 * c + 0 * x], -1)
            elif noise:
                pixels = rng.integers(0, 255, (side, side + i, 3))
            else:
                pixels = np.full((side, side + i, 3), 40 * c)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{i}.jpg", quality=90)
    return root


def packed(tmp_path, shard_mb=0.004, **kw):
    src = image_folder(tmp_path / "src", **kw)
    classes, _, samples = sh.image_folder_samples(src)
    sh.pack(samples(), tmp_path / "packed", "imagefolder", shard_mb, {"classes": classes})
    return tmp_path / "packed"


def batches(dst, batch=4, dist=ONE, workers=0, mode="cpu", seed=0, buffer=5, ids=None):
    s = sh.ShardSet(dst)
    ids = np.arange(len(s)) if ids is None else ids
    return ShardBatches(
        s,
        ids,
        batch,
        dist,
        seed,
        torch.device("cpu"),
        Decoding(mode, 16, True, seed),
        workers,
        buffer,
    )


def test_pack_writes_webdataset_tars_an_index_and_a_manifest(tmp_path):
    dst = packed(tmp_path)
    m = json.loads((dst / "manifest.json").read_text())
    assert m["format"] == "gpulab-shards" and m["kind"] == "imagefolder" and m["samples"] == 24
    assert m["classes"] == ["c0", "c1", "c2"] and len(m["shards"]) > 1
    assert sum(s["samples"] for s in m["shards"]) == 24
    with tarfile.open(dst / m["shards"][0]["name"]) as tar:  # readable as a plain tar
        names = tar.getnames()
    assert names[:2] == ["000000000.jpg", "000000000.cls"]
    s = sh.ShardSet(dst)
    sample = s.read(9)
    assert Image.open(io.BytesIO(sample["jpg"])).size == (25, 24)
    assert int(sample["cls"]) == s.label[9] == 1
    assert sh.verify(dst) == {
        "shards": len(m["shards"]),
        "samples": 24,
        "bytes": sum(x["bytes"] for x in m["shards"]),
        "kind": "imagefolder",
    }


def test_every_sample_once_per_epoch_new_order_each_epoch_same_for_a_seed(tmp_path):
    dst = packed(tmp_path)
    b = batches(dst, batch=4, buffer=6)
    e0, e1 = b.rows(0).ravel(), b.rows(1).ravel()
    assert sorted(e0) == list(range(24)) == sorted(e1) and list(e0) != list(e1)
    assert list(batches(dst, batch=4, buffer=6).rows(0).ravel()) == list(e0)
    assert list(batches(dst, batch=4, buffer=6, seed=1).rows(0).ravel()) != list(e0)
    labels = [int(y) for _, ys in b.epoch(0) for y in ys]
    assert labels == [int(sh.ShardSet(dst).label[i]) for i in e0]


def test_bounded_shuffle_keeps_samples_near_their_stream_position():
    ids = np.arange(1000)
    shard = ids // 100
    order = epoch_order(ids, shard, 10, seed=0, epoch=0, buffer=20)
    assert sorted(order) == list(ids)
    rank = np.argsort(np.random.default_rng([0, 0]).permutation(10))
    stream = ids[np.lexsort((ids, rank[shard]))]
    position = {int(v): k for k, v in enumerate(stream)}
    moved = np.array([abs(position[int(v)] - k) for k, v in enumerate(order)])
    assert moved.max() <= 20 and moved.mean() > 2


def test_resume_mid_epoch_reads_exactly_the_remaining_batches(tmp_path):
    dst = packed(tmp_path)
    full = [y.tolist() for _, y in batches(dst, workers=2).epoch(3)]
    rest = [y.tolist() for _, y in batches(dst, workers=2).epoch(3, start_step=2)]
    assert rest == full[2:] and len(full) == 6


def test_two_ranks_get_disjoint_equal_parts(tmp_path):
    dst = packed(tmp_path)  # 24 samples, global batch 10: 2 steps, 5 per rank each
    parts = [batches(dst, batch=10, dist=DistInfo(2, r, r, "gloo")).rows(0) for r in (0, 1)]
    assert parts[0].shape == parts[1].shape == (2, 5)
    assert not set(parts[0].ravel()) & set(parts[1].ravel())


def test_two_ranks_augment_their_halves_exactly_as_one_process(tmp_path):
    # a sample's crop and flip follow its place in the global batch, not in a rank's slice:
    # otherwise slot j of every rank draws the same boxes, and 2 processes train on other pixels
    dst = packed(tmp_path, noise=True)
    one = [x for x, _ in batches(dst, batch=8).epoch(1)]
    two = [
        [x for x, _ in batches(dst, batch=8, dist=DistInfo(2, r, r, "gloo")).epoch(1)]
        for r in (0, 1)
    ]
    assert len(one) == len(two[0]) == len(two[1]) == 3
    for whole, first, second in zip(one, *two):
        assert torch.equal(torch.cat([first, second]), whole)
        assert not torch.equal(first, second)


def test_workers_and_decode_paths_give_identical_batches(tmp_path):
    dst = packed(tmp_path, noise=True)
    ref = [x for x, _ in batches(dst, workers=0).epoch(0)]
    for other in (batches(dst, workers=2), batches(dst, mode="gpu")):  # "gpu": batched decode_jpeg
        got = [x for x, _ in other.epoch(0)]
        assert all(torch.equal(a, b) for a, b in zip(ref, got)) and len(got) == len(ref)
    assert ref[0].dtype == torch.float32 and ref[0].shape == (4, 3, 16, 16)


def test_memory_stays_bounded_reading_a_set_larger_than_the_budget(tmp_path):
    dst = packed(tmp_path, shard_mb=1, classes=4, per_class=60, side=128, noise=True)
    total = sum(s["bytes"] for s in sh.read_manifest(dst)["shards"])
    budget = total // 4
    b = batches(dst, batch=8)
    tracemalloc.start()
    n = sum(len(y) for _, y in b.epoch(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 240 and total > 4_000_000 and peak < budget, (peak, total)


def test_the_prefetcher_is_a_pass_through_on_the_cpu():
    data = [(torch.arange(3) + k, torch.tensor([k])) for k in range(4)]
    out = list(DevicePrefetcher(data, torch.device("cpu")))
    assert len(out) == 4 and all(a[0] is b[0] and a[1] is b[1] for a, b in zip(out, data))


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_matches_torchvision_on_uint8_batches(channels_last):
    from torchvision.transforms import v2 as T

    from gpulab.data.decode import IMAGENET_MEAN, IMAGENET_STD, normalize

    x = torch.randint(
        0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    want = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(x.float() / 255)
    got = normalize(x, channels_last)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.allclose(got, want, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


# -- bad input ------------------------------------------------------------------------------------


def test_cli_pack_and_verify(run_cli, tmp_path):
    src = image_folder(tmp_path / "src")
    r = run_cli("data", "pack", src, tmp_path / "p", "--shard-mb", "0.004")
    assert r.code == 0, r.err
    assert "packed 24 imagefolder samples into" in r.out
    r = run_cli("data", "verify", tmp_path / "p")
    assert r.code == 0 and r.out.strip().endswith(": ok") and "24 imagefolder samples" in r.out
    r = run_cli("data", "pack", src, tmp_path / "p")
    assert r.code == 2 and "exists and is not empty" in r.err


def _shard0(dst):
    return dst / sh.read_manifest(dst)["shards"][0]["name"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "is truncated or changed"),
        ("flip", "checksum mismatch"),
        ("manifest", "the index does not match the manifest"),
        ("no-manifest", "has no manifest.json"),
    ],
)
def test_damaged_shards_are_refused(run_cli, tmp_path, damage, message):
    dst = packed(tmp_path)
    shard = _shard0(dst)
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:700])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[600] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif damage == "manifest":
        m = json.loads((dst / "manifest.json").read_text())
        m["shards"][0]["samples"] += 1
        (dst / "manifest.json").write_text(json.dumps(m))
    else:
        (dst / "manifest.json").unlink()
    r = run_cli("data", "verify", dst)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1


def test_a_record_cut_mid_way_names_shard_and_offset(tmp_path):
    dst = packed(tmp_path)
    s = sh.ShardSet(dst)
    s.size[3] -= 600  # as if the shard ended inside sample 3's image
    with pytest.raises(GpulabError, match=r"shard-\d+.tar \(sample 3, offset \d+\): truncated"):
        s.read(3)


def test_empty_source_folder(run_cli, tmp_path):
    (tmp_path / "src" / "c0").mkdir(parents=True)
    r = run_cli("data", "pack", tmp_path / "src", tmp_path / "p")
    assert r.code == 2 and "holds no images in class sub-folders" in r.err
    assert not (tmp_path / "p").exists()


def test_a_full_disk_leaves_nothing_behind(run_cli, tmp_path, monkeypatch):
    src = image_folder(tmp_path / "src")
    real_add, calls = sh._ShardWriter.add, []

    def add(self, sample):
        calls.append(1)
        if len(calls) == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(self, sample)

    monkeypatch.setattr(sh._ShardWriter, "add", add)
    r = run_cli("data", "pack", src, tmp_path / "p", "--shard-mb", "0.004")
    assert r.code == 2 and "is full; free space" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder


def _corrupt_one_jpeg(dst, sample=5):
    s = sh.ShardSet(dst)
    shard, offset = s.paths[s.shard[sample]], int(s.offset[sample])
    raw = bytearray(shard.read_bytes())
    raw[offset + 512 : offset + 512 + 200] = b"\x00" * 200  # the JPEG's header and tables
    shard.write_bytes(bytes(raw))


def _tiny_cnn_on(dst) -> list[str]:
    """`gpulab train cnn` settings: ResNet-18 at 32 px on packed shards, decoded on the CPU."""
    sets = {"data": dst, "model": "resnet18", "decode": "cpu", "batch_size": 4}
    sets |= {"image_size": 32, "workers": 0, "warmup_steps": 0}
    return [word for key, value in sets.items() for word in ("--set", f"{key}={value}")]


def test_a_corrupted_jpeg_in_a_shard_fails_or_is_skipped_and_counted(run_cli, tmp_path):
    dst = packed(tmp_path)
    _corrupt_one_jpeg(dst)
    args = ("train", "cnn", "--device", "cpu", *_tiny_cnn_on(dst))
    r = run_cli(*args, "--out", tmp_path / "r")
    assert r.code == 2 and "is not a decodable image" in r.err and "offset" in r.err
    assert "--set skip_bad=true" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli(*args, "--set", "skip_bad=true", "--out", tmp_path / "r2", "--quiet")
    assert r.code == 0, r.err
    (run,) = (tmp_path / "r2" / "cnn").iterdir()
    m = json.loads((run / "record.json").read_text())["metrics"]
    assert m["skipped_bad_images"] == 1 and m["test_images"] == 3
    assert m["skipped_bad_test_images"] == 0  # sample 5 is a training image


def test_a_bad_image_is_left_out_of_the_held_out_set_and_stood_in_for_in_training(tmp_path):
    from gpulab.data.stream import HeldOutBatches, _BatchReader

    dst = packed(tmp_path)
    _corrupt_one_jpeg(dst, sample=5)
    s = sh.ShardSet(dst)
    held = HeldOutBatches(s, np.array([3, 4, 5, 6]), 16, batch=2, skip_bad=True)
    got = [(x.shape[0], y.tolist()) for x, y in held]
    assert got == [(2, [s.label[3], s.label[4]]), (1, [s.label[6]])] and held.skipped == 1
    alone = HeldOutBatches(s, np.array([5]), 16, batch=1, skip_bad=True)
    assert list(alone) == [] and alone.skipped == 1
    with pytest.raises(GpulabError, match="not a decodable image"):
        list(HeldOutBatches(s, np.array([4, 5]), 16, batch=2))
    # training keeps every batch whole: a batch of bad images only takes the last good sample
    dec = Decoding("cpu", 16, True, 0, skip_bad=True)
    rows = np.array([[0], [5], [1]])
    out = list(_BatchReader(s, rows, 0, 0, dec))
    assert [bad for _, _, bad in out] == [0, 1, 0]
    assert torch.equal(out[1][0], out[0][0]) and out[1][1].tolist() == [s.label[0]]
    with pytest.raises(GpulabError, match="every image of the first batch failed"):
        list(_BatchReader(s, np.array([[5], [0]]), 0, 0, dec))


def test_the_stream_reads_nothing_back_from_the_device(tmp_path):
    # On the meta device any read of a device value on the host fails; on a GPU such a read
    # (a per-batch counter copied there and read back) waits for the step before it, and that
    # wait shows up as data wait
    s = sh.ShardSet(packed(tmp_path))
    b = ShardBatches(
        s, np.arange(len(s)), 4, ONE, 0, torch.device("meta"), Decoding("cpu", 16, True, 0), 0
    )
    shapes = [(x.device.type, tuple(x.shape), tuple(y.shape)) for x, y in b.epoch(0)]
    assert shapes == [("meta", (4, 3, 16, 16), (4,))] * 6 and b.skipped == 0


def test_a_shard_set_keeps_few_files_open_and_closes_them_when_dropped(tmp_path, monkeypatch):
    import gc
    import os

    dst = packed(tmp_path)
    monkeypatch.setattr(sh, "MAX_OPEN_SHARDS", 2)
    open_files = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = open_files()
    s = sh.ShardSet(dst)
    assert len(s.paths) > 2
    assert all(s.read(i) for i in range(len(s)))  # every shard, in order and again backwards
    assert all(s.read(i) for i in reversed(range(len(s))))
    assert open_files() == before + 2
    del s
    gc.collect()
    assert open_files() == before


def test_pack_refuses_a_file_as_its_destination(run_cli, tmp_path):
    src = image_folder(tmp_path / "src")
    (tmp_path / "taken").write_text("notes")
    for extra in ((), ("--force",)):
        r = run_cli("data", "pack", src, tmp_path / "taken", *extra)
        assert r.code == 2 and "is a file; give a folder for the shards" in r.err
        assert (tmp_path / "taken").read_text() == "notes"


def test_an_empty_image_is_a_decode_error_that_skip_bad_can_skip():
    from gpulab.data.decode import DecodeError, decode_augment_cpu, decode_cpu

    for decode in (decode_cpu, lambda d: decode_augment_cpu(d, np.random.default_rng(0), 16, True)):
        with pytest.raises(DecodeError, match="empty"):
            decode(b"")


# -- the input-bound diagnosis ---------------------------------------------------------------------


def test_classify_names_the_verdict_and_the_slowest_stage():
    from gpulab.bench.diagnose import classify

    fast = {"storage": 9000.0, "decode": 5000.0, "host_to_device": 20000.0, "compute": 3000.0}
    assert classify(fast, 3000.0, 2900.0) == {
        "verdict": "compute-bound",
        "input_bound_fraction": pytest.approx(1 / 30),
        "bounding_stage": "compute",
    }
    slow = {**fast, "decode": 800.0}
    r = classify(slow, 3000.0, 790.0)
    assert r["verdict"] == "input-bound" and r["bounding_stage"] == "decode"
    assert r["input_bound_fraction"] == pytest.approx(1 - 790 / 3000)
    assert classify(fast, 3000.0, 2000.0)["bounding_stage"] == "overlap"
    assert classify({**fast, "storage": None}, 3000.0, 100.0)["bounding_stage"] == "overlap"
    # a 15% loss on a machine whose identical synthetic runs were 20% apart is noise
    assert classify(fast, 3000.0, 2550.0)["verdict"] == "input-bound"
    assert classify(fast, 3000.0, 2550.0, noise=0.2)["verdict"] == "compute-bound"
    assert classify(fast, 3000.0, 2000.0, noise=0.2)["verdict"] == "input-bound"


def _measured(synthetic_runs, warm, loader, **kw):
    from gpulab.bench.diagnose import Measurements

    figures = {
        "synthetic_runs": synthetic_runs,
        "warm": {"images_per_s": warm, "data_wait_fraction": 0.5},
        "cold": {"images_per_s": warm * 0.9, "data_wait_fraction": 0.6},
        "cache_dropped": True,
        "loader": loader,
        "storage_bytes": 4_000_000,
        "storage_seconds": 0.5,
        "samples": 1000,
        "host_to_device": None,
        **kw,
    }
    return Measurements(**figures)


def test_a_slow_decoder_is_input_bound_on_decode():
    from gpulab.bench.diagnose import summarize

    # a decoder at 20 img/s under a model that trains at 300-310 img/s on synthetic batches
    d = summarize(_measured((300.0, 310.0), warm=19.0, loader=20.0))
    assert d["verdict"] == "input-bound" and d["bounding_stage"] == "decode"
    assert d["input_bound_fraction"] == pytest.approx(1 - 19 / 305)
    assert d["cold_input_bound_fraction"] == pytest.approx(1 - 19 * 0.9 / 305)
    assert d["stages_images_per_s"] == {
        "storage": 2000.0,  # 1000 images read in 0.5 s
        "decode": 20.0,
        "host_to_device": None,
        "compute": 305.0,
    }
    assert d["storage"] == {"bytes": 4_000_000, "seconds": 0.5, "gbps": pytest.approx(0.008)}
    # storage that could not be read cold is no stage figure
    d = summarize(_measured((300.0, 310.0), warm=19.0, loader=20.0, cache_dropped=False))
    assert d["stages_images_per_s"]["storage"] is None and d["cache_dropped"] is False


def test_fast_inputs_to_a_heavy_model_are_compute_bound():
    from gpulab.bench.diagnose import summarize

    d = summarize(_measured((19.0, 19.0), warm=18.5, loader=600.0))
    assert d["verdict"] == "compute-bound" and d["bounding_stage"] == "compute"
    assert d["input_bound_fraction"] == pytest.approx(1 - 18.5 / 19)
    # the two synthetic runs 17 and 21 img/s: 21% apart, so a 13% loss is the machine's noise
    d = summarize(_measured((17.0, 21.0), warm=16.5, loader=600.0))
    assert d["synthetic"] == {
        "images_per_s": 19.0,
        "runs_images_per_s": [17.0, 21.0],
        "noise": pytest.approx(4 / 19),
    }
    assert d["input_bound_fraction"] == pytest.approx(1 - 16.5 / 19)
    assert d["verdict"] == "compute-bound" and d["bounding_stage"] == "compute"


def test_diagnose_brackets_the_real_runs_and_decides_from_their_figures(tmp_path, monkeypatch):
    import gpulab.bench.diagnose as diagnosis
    from gpulab.data.batches import loader_workers, read_ahead

    dst = packed(tmp_path, classes=2, per_class=6)
    runs, events = iter([300.0, 19.0, 17.0, 310.0]), []

    def train_rate(cfg, device, out):
        events.append(("train", cfg.data, cfg.warmup_steps, cfg.steps_per_epoch))
        return {"images_per_s": next(runs), "data_wait_fraction": 0.25}

    monkeypatch.setattr(diagnosis, "_train_rate", train_rate)
    monkeypatch.setattr(diagnosis, "_loader_rate", lambda cfg, dev, steps: 20.0)
    monkeypatch.setattr(diagnosis, "drop_cache", lambda files: events.append("drop") or True)
    monkeypatch.setattr(diagnosis, "read_all", lambda files: events.append("read") or (8000, 0.5))
    sets = {"image_size": "32", "workers": "0"}
    d = diagnosis.diagnose(dst, "resnet18", 4, 3, 2, "cpu", tmp_path, sets, say=lambda _: None)
    # the real runs warm up past the batches the loader reads ahead while the model is built
    ahead = read_ahead(loader_workers(0))
    real = ("train", str(dst), 2 + ahead, 5 + ahead)
    assert events == [
        *[("train", "synthetic", 2, 5), "read", real, "drop", real],
        *["read", "drop", "read", ("train", "synthetic", 2, 5)],
    ]
    assert d["verdict"] == "input-bound" and d["bounding_stage"] == "decode"
    assert d["input_bound_fraction"] == pytest.approx(1 - 19 / 305)
    assert d["cold_input_bound_fraction"] == pytest.approx(1 - 17 / 305)
    assert d["stages_images_per_s"]["storage"] == 12 / 0.5  # 12 packed images in 0.5 s
    assert d["real_warm"]["images_per_s"] == 19.0 and d["real_cold"]["images_per_s"] == 17.0


def _decided_from_its_figures(d, dst):
    """A real diagnosis's verdict depends on the machine's speed at the time: it is checked
    against the decision on the figures it measured, not against a fixed answer."""
    from gpulab.bench.diagnose import classify

    syn, stages = d["synthetic"], d["stages_images_per_s"]
    before, after = syn["runs_images_per_s"]
    assert before > 0 and after > 0 and syn["images_per_s"] == pytest.approx((before + after) / 2)
    assert syn["noise"] == pytest.approx(abs(before - after) / syn["images_per_s"])
    assert stages["compute"] == syn["images_per_s"] and stages["host_to_device"] is None
    assert stages["decode"] == d["loader_alone_images_per_s"]
    assert d["storage"]["bytes"] == sum(p.stat().st_size for p in dst.glob("shard-*.tar"))
    assert (stages["storage"] is not None) == d["cache_dropped"]
    warm, cold = d["real_warm"]["images_per_s"], d["real_cold"]["images_per_s"]
    assert warm > 0 and 0 <= d["real_warm"]["data_wait_fraction"] <= 1
    decided = classify(stages, syn["images_per_s"], warm, syn["noise"])
    assert {k: d[k] for k in decided} == decided
    assert d["cold_input_bound_fraction"] == pytest.approx(max(0, 1 - cold / syn["images_per_s"]))


def test_bench_diagnose_cli(run_cli, tmp_path):
    dst = packed(tmp_path, classes=2, per_class=6)
    r = run_cli(
        *("bench", "cnn", "--data", dst, "--diagnose", "--model", "resnet18", "--batch", "4"),
        *("--steps", "2", "--set", "image_size=32", "--set", "workers=0", "--devices", "cpu"),
        *("--json", tmp_path / "d.json", "--out", tmp_path / "runs"),
    )
    assert r.code == 0, r.err
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["verdict"] in ("input-bound", "compute-bound") and "bounding stage:" in r.out
    # 12 images are 2 batches an epoch, fewer than the warm-up and steps: the loader alone
    # reads on into the next epochs, as training does
    assert d["loader_alone_images_per_s"] > 0 and d["stages_images_per_s"]["decode"] > 0
    assert set(d["stages_images_per_s"]) == {"storage", "decode", "host_to_device", "compute"}
    _decided_from_its_figures(d, dst)
    steps = [line.split(")")[0].strip() for line in r.out.splitlines() if line.startswith("  (")]
    assert steps == ["(i", "(ii", "(iii", "(iv", "(v"]
    assert len(list((tmp_path / "runs" / "cnn").iterdir())) == 4  # (i), (ii), (iii), (v)
    r = run_cli("bench", "--diagnose", "--out", tmp_path / "runs")
    assert r.code == 2 and "gpulab bench cnn --data DIR --diagnose" in r.err
    r = run_cli("bench", "cnn", "--data", dst, "--diagnose", "--probe", tmp_path / "d.json")
    assert r.code == 2 and "is not a `gpulab probe --json` result" in r.err


def test_probe_figures_stand_beside_the_diagnosis(tmp_path):
    from gpulab.bench.diagnose import _probe_lines, probe_figures

    doc = {
        "device_name": "NVIDIA H100 80GB HBM3",
        "storage": {"seq_read_cold_gbps": {"median": 1.4}, "seq_read_warm_gbps": {"median": 9.0}},
        "bandwidth": {
            "h2d_pinned": [{"bytes": 1, "gbps_median": 20.0}, {"bytes": 2, "gbps_median": 54.1}],
            "h2d_pageable": [{"bytes": 2, "gbps_median": 7.2}],
        },
    }
    (tmp_path / "p.json").write_text(json.dumps(doc))
    f = probe_figures(tmp_path / "p.json")
    assert f["h2d_pinned_gbps"] == 54.1 and f["storage_cold_gbps"] == 1.4
    (line,) = _probe_lines(f)
    assert "storage 1.40 GB/s cold" in line and "54.10 GB/s pinned, 7.20 GB/s pageable" in line


def test_cli_pack_refuses_what_is_not_an_image_folder(run_cli, tmp_path, tiny_csv):
    r = run_cli("data", "pack", tiny_csv, tmp_path / "rows")
    assert r.code == 2 and "is not a folder; pass an ImageFolder (DIR/CLASS/IMAGE.jpg)" in r.err
    r = run_cli("data", "pack", tmp_path / "missing", tmp_path / "y")
    assert r.code == 2 and "no such folder:" in r.err and "missing" in r.err
    assert not (tmp_path / "rows").exists() and not (tmp_path / "y").exists()


@pytest.mark.cuda
def test_gpu_decode_matches_cpu_decode_and_trains(tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.registry import get_workload

    # Noise images are the worst case for decoders that upsample chroma differently (on an H100
    # nvJPEG and libjpeg-turbo differed by 0.12 there, ~7/255): smooth ramps test that both
    # paths crop and flip the same way, and keep the decoders' own differences small.
    # 32 px crops of 48 px images: no crop spans twice the output, so the CPU path decodes
    # every image whole, as nvJPEG does
    dst = packed(tmp_path / "ramps", side=48, gradient=True)
    s = sh.ShardSet(dst)

    def first(mode, device):
        b = ShardBatches(
            s, np.arange(len(s)), 8, ONE, 0, torch.device(device), Decoding(mode, 32, True, 0), 2
        )
        return next(iter(b.epoch(0)))

    (xg, yg), (xc, yc) = first("gpu", "cuda"), first("cpu", "cuda")
    assert xg.is_cuda and torch.equal(yg, yc)
    assert (xg - xc).abs().mean() < 0.05  # ~3/255: rounding, not another crop
    assert (xg - xc.flip(-1)).abs().mean() > 0.2  # a different flip would show
    dst = packed(tmp_path, noise=True)
    cfg = get_workload("cnn").config(
        "debug", {"data": str(dst), "decode": "gpu", "image_size": "32", "workers": "2"}
    )
    record = train("cnn", cfg, TrainOptions(device="cuda", out=tmp_path / "r", quiet=True)).record
    assert record.status == "complete" and record.metrics["skipped_bad_images"] == 0


def test_a_corrupted_jpeg_among_the_held_out_images_is_one_line(run_cli, tmp_path):
    from gpulab.workloads.cnn.data import split_per_class

    dst = packed(tmp_path)
    _, held_out = split_per_class(sh.ShardSet(dst).label, 0.1, 0)
    _corrupt_one_jpeg(dst, sample=held_out[0])
    args = ("train", "cnn", "--device", "cpu", *_tiny_cnn_on(dst))
    r = run_cli(*args, "--out", tmp_path / "r")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"sample {held_out[0]} is not a decodable image" in r.err and "offset" in r.err
    r = run_cli(*args, "--set", "skip_bad=true", "--out", tmp_path / "r2", "--quiet")
    assert r.code == 0, r.err


def _jpeg(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


def _smooth_photo(width=1200, height=900) -> Image.Image:
    """Smooth colour ramps with a few soft blobs: where a 1/8-scale decode and a full decode
    then downscale should agree to a few levels."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / width
    g = 255 * y / height
    b = 128 + 100 * np.sin(x / 97.0) * np.cos(y / 131.0)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


def test_jpeg_size_reads_the_frame_header_of_every_kind_of_jpeg():
    from gpulab.data.decode import jpeg_size

    photo = _smooth_photo(301, 217)
    exif = Image.Exif()
    exif[0x0112] = 6  # an orientation tag: an APP1 segment before the frame header
    for data in (
        _jpeg(photo),
        _jpeg(photo, progressive=True),
        _jpeg(photo.convert("L")),
        _jpeg(photo, exif=exif.tobytes()),
        _jpeg(photo.convert("CMYK")),
    ):
        assert jpeg_size(data) == (217, 301)
    png = io.BytesIO()
    photo.save(png, "PNG")
    assert jpeg_size(png.getvalue()) is None and jpeg_size(b"\xff\xd8\xff") is None


def test_dct_scale_keeps_the_crop_at_least_the_output_size():
    from gpulab.data.decode import dct_scale

    assert dct_scale((0, 0, 2000, 1800), 224) == 8
    assert dct_scale((0, 0, 900, 1000), 224) == 4  # 900 / 8 < 224
    assert dct_scale((0, 0, 448, 448), 224) == 2
    assert dct_scale((0, 0, 447, 3000), 224) == 1


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_crops(monkeypatch):
    import gpulab.data.decode as decode

    data = _jpeg(_smooth_photo(), quality=95)
    full = decode.augment([decode.decode_cpu(data)] * 6, [np.random.default_rng(7)] * 6, 64, True)
    calls = []
    real = decode._decode_reduced
    monkeypatch.setattr(decode, "_decode_reduced", lambda d, s: calls.append(s) or real(d, s))
    rng = np.random.default_rng(7)
    fast = torch.stack([decode.decode_augment_cpu(data, rng, 64, True) for _ in range(6)])
    assert fast.shape == full.shape == (6, 3, 64, 64) and fast.dtype == torch.uint8
    assert calls and max(calls) >= 4  # crops of ~300-900 px for 64: decoded at 1/4 or 1/8
    diff = (fast.float() - full.float()).abs().mean(dim=(1, 2, 3))
    assert diff.max() < 3.0  # the same crops and flips, a different filter: a few levels
    assert (fast.float() - full.flip(-1).float()).abs().mean() > 10  # a wrong flip would show
    small = _jpeg(_smooth_photo(100, 80))  # no crop spans 2 x 64: decoded whole, as before
    calls.clear()
    a = decode.decode_augment_cpu(small, np.random.default_rng(3), 64, False)
    b = decode.augment([decode.decode_cpu(small)], [np.random.default_rng(3)], 64, False)[0]
    assert not calls and torch.equal(a, b)
