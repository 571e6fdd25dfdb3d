"""digits (the MNIST demo) and cnn (VGG16 / AlexNet / ResNet throughput): data, FLOPs, MFU,
batch search, and bad input through the CLI."""

import gzip
import json
import struct

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from gpulab.runtime import GpulabError
from gpulab.runtime.flops import count_flops, measured_peaks, utilisation
from gpulab.runtime.memory import search_batch
from gpulab.train import TrainOptions, train
from gpulab.workloads.digits.data import read_idx, read_mnist
from gpulab.workloads.registry import get_workload


def write_idx(path, array: np.ndarray, magic: bytes | None = None, cut: int = 0) -> None:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    raw = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - cut]
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def fake_mnist(folder, n_train=40, n_test=20, gz=False):
    """Digits drawn as a bright square whose position encodes the label: learnable, 28x28."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for part, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 30, (n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y : 6 + 2 * y, 4:24] = 255
        write_idx(folder / f"{part}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{ext}", labels)
    return folder


# -- digits ---------------------------------------------------------------------------------------


def test_digits_learn_the_bundled_set_within_a_small_budget(tmp_path):
    cfg = get_workload("digits").config("default", {"epochs": "3"})  # 84 steps of 50
    result = train("digits", cfg, TrainOptions(device="cpu", out=tmp_path, quiet=True))
    m, record = result.record.metrics, result.record
    assert m["test_accuracy"] >= 0.90 and m["test_images"] == 360
    counts = np.array(m["confusion"])
    assert counts.shape == (10, 10) and counts.sum() == 360
    assert np.isclose(np.trace(counts) / 360, m["test_accuracy"])
    assert (result.run_dir / "confusion.png").is_file()
    q = record.quality
    assert q.metric == "test_accuracy" and q.target == 0.97
    if q.reached:
        assert q.time_to_quality_s > 0 and q.step % 20 == 0
    eff = record.efficiency
    # two 5x5 convs, 1024-unit layer: ~27.8 MFLOP per 28x28 image forward
    assert 27e6 < eff.forward_flops_per_sample < 29e6 and eff.mfu is None


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_read_raw_and_gzipped(tmp_path, gz):
    folder = fake_mnist(tmp_path / "mnist", gz=gz)
    arrays = read_mnist(folder)
    assert arrays["train_images"].shape == (40, 28, 28) and arrays["test_labels"].shape == (20,)
    assert arrays["train_images"].dtype == np.uint8 and arrays["train_labels"].max() <= 9
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    assert (read_idx(folder / name) == arrays["train_images"]).all()


def test_digits_train_on_mnist_files_with_the_mnist_target(run_cli, tmp_path):
    folder = fake_mnist(tmp_path / "mnist", n_train=200, n_test=50)
    r = run_cli(
        *("train", "digits", "--set", f"data={folder}", "--set", "epochs=2"),
        *("--set", "batch_size=20"),
        *("--device", "cpu", "--out", tmp_path / "runs", "--quiet"),
    )
    assert r.code == 0, r.err
    (run,) = (tmp_path / "runs" / "digits").iterdir()
    record = json.loads((run / "record.json").read_text())
    assert record["quality"]["target"] == 0.99 and record["metrics"]["test_images"] == 50
    assert record["metrics"]["source"] == str(folder)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("magic", "is not an IDX file (magic number 08030000)"),
        ("type", "holds IDX type 0x0d"),
        ("truncated", "is truncated"),
        ("missing", "has no t10k-labels-idx1-ubyte[.gz]"),
        ("mismatch", "40 train images but 39 labels"),
        ("garbled-gz", "could not be read"),
    ],
)
def test_broken_idx_files_are_refused(run_cli, tmp_path, damage, message):
    folder = fake_mnist(tmp_path / "mnist")
    images = folder / "train-images-idx3-ubyte"
    arr = read_idx(images)
    if damage == "magic":
        write_idx(images, arr, magic=bytes([8, 3, 0, 0]))
    elif damage == "type":
        write_idx(images, arr, magic=bytes([0, 0, 0x0D, 3]))
    elif damage == "truncated":
        write_idx(images, arr, cut=100)
    elif damage == "missing":
        (folder / "t10k-labels-idx1-ubyte").unlink()
    elif damage == "mismatch":
        write_idx(folder / "train-labels-idx1-ubyte", np.zeros(39))
    else:
        images.unlink()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    r = run_cli(
        "train", "digits", "--set", f"data={folder}", "--device", "cpu", "--out", tmp_path / "r"
    )
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "digits").exists() or not any(
        (tmp_path / "r" / "digits").iterdir()
    )


# -- cnn: models, FLOPs, MFU ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["vgg16", "alexnet", "resnet50", "resnet18"])
def test_one_training_step_of_each_model_at_tiny_resolution(tmp_path, model):
    cfg = get_workload("cnn").config(
        "debug", {"model": model, "batch_size": "2", "steps_per_epoch": "1", "warmup_steps": "0"}
    )
    result = train("cnn", cfg, TrainOptions(device="cpu", out=tmp_path, quiet=True))
    record = result.record
    assert record.status == "complete" and record.position.global_step == 1
    assert np.isfinite(record.history[-1]["train_loss"])
    assert record.config["image_size"] == 64 and record.efficiency.train_flops_per_sample > 0


@pytest.mark.parametrize(("name", "gmacs"), [("resnet50", 4.1), ("vgg16", 15.5)])
def test_flops_per_image_match_the_published_figures(name, gmacs):
    model = getattr(torchvision.models, name)()
    loss = get_workload("cnn").loss
    flops = count_flops(
        model, (torch.randn(2, 3, 224, 224), torch.zeros(2, dtype=torch.long)), loss
    )
    assert abs(flops["forward"] / 2e9 - gmacs) / gmacs < 0.05  # per image, FLOPs = 2 x MACs
    assert 2.8 < flops["train"] / flops["forward"] < 3.0  # backward ~2x forward


def test_mfu_arithmetic():
    u = utilisation(2e9, 1000.0, "bf16", {"bf16": 10.0, "fp32": 1.0}, {"bf16": 8.0})
    assert u["achieved_tflops"] == pytest.approx(2.0) and u["peak_column"] == "bf16"
    assert u["mfu"] == pytest.approx(0.2) and u["mfu_of_measured"] == pytest.approx(0.25)
    unknown = utilisation(2e9, 1000.0, "fp32", None)
    assert unknown["mfu"] is None and unknown["mfu_of_measured"] is None
    assert utilisation(1e9, 1.0, "tf32", {"tf32": None})["mfu"] is None


def test_measured_peak_from_a_probe_file(tmp_path):
    doc = {
        "device_name": "NVIDIA H100 80GB HBM3",
        "compute": {
            "results": [
                {"dtype": "bf16", "tflops_best": 700.0, "check_passed": True},
                {"dtype": "bf16", "tflops_best": 760.0, "check_passed": True},
                {"dtype": "fp8", "tflops_best": 9999.0, "check_passed": False},
            ]
        },
    }
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert measured_peaks(tmp_path / "p.json", "NVIDIA H100 80GB HBM3") == {"bf16": 760.0}
    with pytest.raises(GpulabError, match="not this run's 'NVIDIA L4'"):
        measured_peaks(tmp_path / "p.json", "NVIDIA L4")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(GpulabError, match="is not a `gpulab probe --json` result"):
        measured_peaks(tmp_path / "bad.json", "x")


def test_train_reports_mfu_of_the_probed_peak(run_cli, tmp_path):
    from gpulab.runtime.environment import cpu_model

    doc = {
        "device_name": cpu_model(),
        "compute": {"results": [{"dtype": "fp32", "tflops_best": 0.5, "check_passed": True}]},
    }
    (tmp_path / "p.json").write_text(json.dumps(doc))
    r = run_cli(
        *("train", "cnn", "--preset", "debug", "--device", "cpu", "--probe", tmp_path / "p.json"),
        *("--out", tmp_path / "runs"),
    )
    assert r.code == 0, r.err
    (run,) = (tmp_path / "runs" / "cnn").iterdir()
    eff = json.loads((run / "record.json").read_text())["efficiency"]
    assert eff["measured_peak_tflops"] == 0.5
    assert eff["mfu_of_measured"] == pytest.approx(eff["achieved_tflops"] / 0.5)
    assert "% of 0.5 measured" in r.out


# -- cnn: batch search, memory, compile, folders ----------------------------------------------------


def test_batch_search_doubles_then_bisects_then_backs_off():
    chosen, tried = search_batch(lambda b: b <= 300, start=64)
    assert [b for b, _ in tried] == [64, 128, 256, 512, 384, 320, 288]
    assert [ok for _, ok in tried] == [True, True, True, False, False, False, True]
    assert chosen == 256  # 90% of 288, down to a multiple of 8


def test_batch_search_halves_on_out_of_memory():
    chosen, tried = search_batch(lambda b: b <= 5, start=64)
    assert [b for b, _ in tried] == [64, 32, 16, 8, 4, 6, 5] and chosen == 4
    with pytest.raises(GpulabError, match="not even a batch of 1 fits"):
        search_batch(lambda b: False, start=8)


def test_out_of_memory_without_auto_is_one_line(run_cli, tmp_path, monkeypatch):
    workload = get_workload("cnn")

    def oom(model, batch, data=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(workload, "loss", oom)
    r = run_cli("train", "cnn", "--preset", "debug", "--device", "cpu", "--out", tmp_path)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert (
        "out of CPU memory at batch size 8; pass a smaller --set batch_size=N or --set auto_batch=true"
        in r.err
    )
    assert not (tmp_path / "cnn").exists() or not any((tmp_path / "cnn").iterdir())


def test_compile_where_unavailable(run_cli, tmp_path, monkeypatch):
    import gpulab.train

    monkeypatch.setattr(gpulab.train, "compile_unavailable", lambda device: "no C++ compiler")
    args = ("train", "cnn", "--preset", "debug", "--device", "cpu", "--out", tmp_path, "--quiet")
    r = run_cli(*args, "--compile", "on")
    assert r.code == 2 and "torch.compile is not available here (no C++ compiler)" in r.err
    assert "--compile auto" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli(*args, "--compile", "auto")
    assert r.code == 0, r.err
    assert "not available here (no C++ compiler); running eager" in r.out
    (run,) = (tmp_path / "cnn").iterdir()
    assert json.loads((run / "record.json").read_text())["options"]["compile"] is False


def test_cnn_compiles_by_default_on_cuda_only():
    from gpulab.cli import COMPILE_SETTING, Compile
    from gpulab.train import compile_setting

    cnn, digits = get_workload("cnn"), get_workload("digits")
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compile_setting(None, cnn, cuda) == "auto"
    assert compile_setting(None, cnn, cpu) is False
    assert compile_setting(None, digits, cuda) is False
    assert compile_setting(False, cnn, cuda) is False  # --compile off
    assert compile_setting(True, digits, cpu) is True
    assert {Compile.auto: "auto", Compile.on: True, Compile.off: False} == COMPILE_SETTING


def test_no_compile_flag_runs_eager(run_cli, tmp_path):
    args = ("train", "cnn", "--preset", "debug", "--device", "cpu", "--out", tmp_path, "--quiet")
    r = run_cli(*args, "--compile=off")  # the --opt=value spelling works too
    assert r.code == 0, r.err
    (run,) = (tmp_path / "cnn").iterdir()
    assert json.loads((run / "record.json").read_text())["options"]["compile"] is False


def _folder(root, classes, per_class):
    for c, colour in zip(classes, ["red", "blue", "green"]):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + i, 36), colour).save(root / c / f"{i}.jpg")
    return root


def test_cnn_trains_on_an_image_folder_with_heldout_top1(run_cli, tmp_path):
    root = _folder(tmp_path / "imgs", ["cat", "dog"], 6)
    r = run_cli(
        *("train", "cnn", "--set", f"data={root}", "--set", "model=resnet18"),
        *("--set", "batch_size=4", "--set", "image_size=32", "--set", "workers=0"),
        *("--set", "epochs=2", "--set", "warmup_steps=0"),
        *("--device", "cpu", "--out", tmp_path / "runs", "--quiet"),
    )
    assert r.code == 0, r.err
    (run,) = (tmp_path / "runs" / "cnn").iterdir()
    record = json.loads((run / "record.json").read_text())
    m = record["metrics"]
    assert m["test_images"] == 2 and m["classes"] == 2 and 0 <= m["test_top1"] <= 1
    assert record["position"]["global_step"] == 4  # 10 training images, batches of 4, 2 epochs
    r = run_cli(
        *("train", "cnn", "--set", f"data={root}", "--set", "model=resnet18"),
        *("--set", "batch_size=2", "--set", "steps_per_epoch=3", "--set", "image_size=32"),
        *("--set", "workers=0", "--set", "epochs=2", "--set", "warmup_steps=0"),
        *("--device", "cpu", "--out", tmp_path / "short", "--quiet"),
    )
    assert r.code == 0, r.err
    (run,) = (tmp_path / "short" / "cnn").iterdir()
    record = json.loads((run / "record.json").read_text())
    assert record["position"]["global_step"] == 6  # steps_per_epoch caps each at 3 of 5 batches
    assert "heldout_top1_batch" in record["history"][-1]


def test_steps_fed_from_a_loaders_read_ahead_are_not_timed(run_cli, tmp_path):
    root = _folder(tmp_path / "imgs", ["cat", "dog"], 6)
    r = run_cli(
        *("train", "cnn", "--set", f"data={root}", "--set", "model=resnet18"),
        *("--set", "batch_size=2", "--set", "image_size=32", "--set", "workers=1"),
        *("--set", "epochs=2", "--set", "warmup_steps=0"),
        *("--device", "cpu", "--out", tmp_path / "runs", "--quiet"),
    )
    assert r.code == 0, r.err
    (run,) = (tmp_path / "runs" / "cnn").iterdir()
    timing = json.loads((run / "record.json").read_text())["timing"]
    # one worker holds 2 batches ready before the first step, the prefetcher one more
    assert timing["warmup_steps_excluded"] == 3 and timing["timed_steps"] == 10 - 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "model=vgg99"],
            "unknown model 'vgg99'; known models: vgg16, alexnet, resnet50, resnet18",
        ),
        (["--set", "data={tmp}/empty"], "holds no images in class sub-folders"),
        (["--set", "data={tmp}/one"], "has 1 class folder; classification needs at least 2"),
        (["--set", "data={tmp}/nowhere"], "is not a folder"),
        (["--set", "batch_size=lots"], "--set batch_size=lots: batch_size must be int"),
        (["--set", "steps_per_epoch=0"], "steps_per_epoch must be at least 1"),
        (["--probe", "{tmp}/nope.json"], "is not a `gpulab probe --json` result"),
    ],
)
def test_bad_cnn_input(run_cli, tmp_path, args, message):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    _folder(tmp_path / "one", ["only"], 3)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(
        "train", "cnn", "--preset", "debug", "--device", "cpu", *args, "--out", tmp_path / "r"
    )
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1


def test_a_broken_image_in_a_loader_worker_is_one_line(run_cli, tmp_path):
    root = _folder(tmp_path / "imgs", ["cat", "dog"], 4)
    for name in ("0.jpg", "1.jpg", "2.jpg", "3.jpg"):
        (root / "cat" / name).write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = run_cli(
        *("train", "cnn", "--set", f"data={root}", "--set", "model=resnet18"),
        *(
            "--set",
            "batch_size=2",
            "--set",
            "image_size=32",
            "--set",
            "workers=1",
            "--device",
            "cpu",
            "--out",
            tmp_path / "r",
        ),
    )
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "could not be decoded" in r.err and "cat" in r.err and "Traceback" not in r.err


def test_batch_auto_is_only_for_workloads_that_search(run_cli, tmp_path):
    r = run_cli("train", "digits", "--set", "auto_batch=true", "--out", tmp_path)
    assert r.code == 2 and "unknown setting 'auto_batch' for digits" in r.err


@pytest.mark.cuda
def test_gpu_cnn_batch_auto_and_mfu(tmp_path):
    cfg = get_workload("cnn").config(
        "debug", {"model": "resnet18", "auto_batch": "true", "steps_per_epoch": "20"}
    )
    options = TrainOptions(device="cuda", precision="bf16", out=tmp_path, quiet=True, compile=False)
    record = train("cnn", cfg, options).record
    assert record.options.compile is False
    assert torch.backends.cudnn.benchmark  # fixed shapes: cuDNN picks its kernels once
    assert record.config["batch_size"] >= 8 and record.options.cuda_graph is True
    eff = record.efficiency
    assert eff.achieved_tflops > 0 and (eff.mfu is None or 0 < eff.mfu < 1)
    digits = train(
        "digits",
        get_workload("digits").config("debug"),
        TrainOptions(device="cuda", out=tmp_path, quiet=True),
    )
    assert digits.record.metrics["test_accuracy"] > 0.8


@pytest.mark.cuda
def test_gpu_cnn_default_compiles_and_graphs(tmp_path):
    cfg = get_workload("cnn").config("debug", {"model": "resnet18", "steps_per_epoch": "12"})
    record = train("cnn", cfg, TrainOptions(device="cuda", out=tmp_path, quiet=True)).record
    assert record.options.compile is True and record.options.cuda_graph is True
    assert record.options.precision == "bf16"
    assert np.isfinite(record.history[-1]["train_loss"])


def test_a_large_photo_in_a_folder_is_decoded_small_enough_for_any_crop(tmp_path):
    from gpulab.workloads.cnn.data import decode_at_least, image_folder

    assert decode_at_least(224, True) == 915 and decode_at_least(224, False) == 256
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        y, x = np.mgrid[0:1600, 0:2400]
        ramp = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
        Image.fromarray(ramp).save(tmp_path / c / "big.jpg")
    train_set, test_set = image_folder(tmp_path, 112, True), image_folder(tmp_path, 112, False)
    # 1600 px shorter side: 1/2 (800) keeps the 458 px any 112 px training crop needs, 1/4
    # would not; evaluation needs 128, which 1/8 (200) keeps
    assert train_set.loader(str(tmp_path / "a" / "big.jpg")).size == (1200, 800)
    assert test_set.loader(str(tmp_path / "a" / "big.jpg")).size == (300, 200)
    x, label = train_set[0]
    assert x.shape == (3, 112, 112) and label == 0
    assert test_set[1][0].shape == (3, 112, 112)
