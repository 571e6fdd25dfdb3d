"""Style transfer (optimisation mode): losses, sliders, Gram normalisation, images, bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gpulab.data.images import open_image
from gpulab.data.samples import bundled_photo, generated_painting
from gpulab.runtime import GpulabError, energy, resolve_precision
from gpulab.workloads.style.model import gram
from gpulab.workloads.style.optimize import (
    STYLE_BASE,
    StyleLoss,
    StylizeConfig,
    prepare_images,
    stylize,
)
from gpulab.workloads.style.weights import load_vgg19

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vgg():
    return load_vgg19(None, seed=0)[0]


@pytest.fixture(scope="module")
def images():
    return bundled_photo("china"), generated_painting(96)


def _run(vgg, images, **changes):
    cfg = StylizeConfig(**{"size": 64, "steps": 12, **changes})
    return stylize(*images, vgg, cfg, CPU, resolve_precision("fp32", CPU))


def test_gram_is_normalised_independently_of_image_size():
    f = torch.rand(1, 8, 5, 7)
    tiled = f.repeat(1, 1, 2, 3)  # the same statistics over a 6x larger image
    assert torch.allclose(gram(f), gram(tiled), rtol=1e-5)
    assert gram(f).shape == (1, 8, 8)
    assert torch.allclose(gram(f)[0], f.reshape(8, -1) @ f.reshape(8, -1).T / (8 * 5 * 7))


def test_gram_stays_float32_under_bf16_autocast():
    f = torch.randn(1, 8, 5, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram(f.bfloat16())
    assert g.dtype == torch.float32
    ref = f.bfloat16().float().reshape(8, -1)
    assert torch.allclose(g[0], ref @ ref.T / (8 * 5 * 7), rtol=1e-5)


def test_slider_mapping_weights_the_terms(vgg, images):
    content, style = prepare_images(*images, 64, CPU)
    cfg = StylizeConfig(content_weight=1.5, style_weight=4.0, tv_weight=0.01, size=64)
    terms = StyleLoss.for_images(vgg, content, style, cfg, resolve_precision("fp32", CPU), CPU)(
        content
    )
    expected = 1.5 * terms["content"] + 4.0 * STYLE_BASE * terms["style"] + 0.01 * terms["tv"]
    assert torch.allclose(terms["total"], expected)
    assert terms["content"] == 0  # the content image matches its own features exactly


def test_output_keeps_the_content_aspect_and_losses_fall(vgg, images):
    result = _run(vgg, images)
    assert result.image.shape == (1, 3, 43, 64)  # 640 x 427 content, longer side 64
    assert result.image.min() >= 0 and result.image.max() <= 1
    history = result.history
    assert len(history) == 12 and history[-1]["total"] < history[0]["total"]
    assert result.timing["seconds_per_image"] > 0 and result.timing["steps"] == 12
    assert result.timing["cuda_graph"] is False  # a CUDA-only replay; the CPU runs each step


def test_style_zero_reconstructs_the_content(vgg, images):
    content, _ = prepare_images(*images, 64, CPU)
    kept = _run(vgg, images, style_weight=0.0, tv_weight=0.0)  # from the content image: stays
    assert max(h["content"] for h in kept.history) < 1e-6
    assert (kept.image - content).abs().max() < 0.02
    rebuilt = _run(
        vgg, images, style_weight=0.0, init="noise", steps=40, optimizer="lbfgs", tv_weight=0.0
    )
    first, last = rebuilt.history[0], rebuilt.history[-1]
    assert last["content"] < 0.1 * first["content"]  # from noise: features rebuilt
    torch.manual_seed(0)
    noise = torch.rand_like(content)
    assert ((rebuilt.image - content) ** 2).mean() < ((noise - content) ** 2).mean()
    assert last["total"] == pytest.approx(last["content"])


def test_content_zero_synthesises_the_style(vgg, images):
    result = _run(vgg, images, content_weight=0.0, steps=40, optimizer="lbfgs", tv_weight=0.0)
    first, last = result.history[0], result.history[-1]
    assert last["style"] < 0.05 * first["style"]
    assert last["total"] == pytest.approx(STYLE_BASE * 5.0 * last["style"], rel=1e-4)


def test_lbfgs_counts_loss_evaluations_as_steps(vgg, images):
    result = _run(vgg, images, optimizer="lbfgs", steps=9)
    assert len(result.history) == 9


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"content_weight": 0.0, "style_weight": 0.0}, "both 0"),
        ({"content_weight": 2.5}, "--content-weight must lie in 0..2"),
        ({"style_weight": -1.0}, "--style-weight must lie in 0..10"),
        ({"size": 32}, "--size must lie in 64..4096"),
        ({"optimizer": "sgd"}, "--optimizer must be adam or lbfgs"),
    ],
)
def test_bad_settings(changes, message):
    with pytest.raises(GpulabError, match=message):
        StylizeConfig(**changes).validate()


# -- images in every mode ------------------------------------------------------------------------


def test_modes_are_converted_to_rgb(tmp_path):
    gray = np.full((8, 10), 200, dtype=np.uint8)
    cases = {
        "gray.png": Image.fromarray(gray, "L"),
        "rgba.png": Image.fromarray(np.zeros((8, 10, 4), dtype=np.uint8), "RGBA"),  # transparent
        "palette.png": Image.fromarray(gray, "L").convert("P"),
        "cmyk.jpg": Image.new("CMYK", (10, 8), (0, 255, 255, 0)),  # red
        "deep.png": Image.fromarray(np.full((8, 10), 65535, dtype=np.uint16)),  # 16-bit white
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    got = {name: np.asarray(open_image(tmp_path / name)) for name in cases}
    assert all(a.shape == (8, 10, 3) for a in got.values())
    assert (got["gray.png"] == 200).all() and (got["palette.png"] == 200).all()
    assert (got["rgba.png"] == 255).all()  # transparency laid on white
    assert got["cmyk.jpg"][..., 0].min() > 200 and got["cmyk.jpg"][..., 1:].max() < 60
    assert (got["deep.png"] == 255).all()


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_at_least_decodes_large_jpegs_at_a_reduced_scale_and_keeps_the_rest(tmp_path):
    photo = bundled_photo("china").resize((1280, 854))  # 640 x 427 doubled
    photo.save(tmp_path / "big.jpg", quality=90)
    photo.save(tmp_path / "big.png")
    full = open_image(tmp_path / "big.jpg")
    assert full.size == (1280, 854)
    assert open_image(tmp_path / "big.jpg", at_least=100).size == (160, 107)  # 1/8: 107 >= 100
    assert open_image(tmp_path / "big.jpg", at_least=300).size == (640, 427)  # 1/2 only
    assert open_image(tmp_path / "big.jpg", at_least=900).size == (1280, 854)  # no room to reduce
    assert open_image(tmp_path / "big.png", at_least=100).size == (1280, 854)  # JPEG only
    small = open_image(tmp_path / "big.jpg", at_least=300)
    # the same picture: close to the full decode scaled down alike
    want = np.asarray(full.resize(small.size, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(np.asarray(small, dtype=np.float32) - want).mean() < 3
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_image(tmp_path / "rotated.jpg", at_least=100).size == (107, 160)  # still upright


# -- the CLI -------------------------------------------------------------------------------------


def test_stylize_cli_writes_image_and_record(run_cli, tmp_path, monkeypatch):
    import gpulab.runtime.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_warned", set())  # said once per process: make this the first
    monkeypatch.setattr(energy, "RAPL_ROOT", tmp_path / "none")  # a machine without RAPL
    out = tmp_path / "out.png"
    args = [
        "stylize",
        "--size",
        "64",
        "--steps",
        "3",
        "--device",
        "cpu",
        "-o",
        out,
        "--out",
        tmp_path / "runs",
    ]
    r = run_cli(*args, "--save-every", "2")
    assert r.code == 0, r.err
    assert Image.open(out).size == (64, 43)
    assert "NOT pretrained" in r.out and "VGG19 ImageNet weights not in torch's cache" in r.err
    assert "gpulab is offline" in r.err and "--vgg-weights PATH" in r.err
    run_dir = next((tmp_path / "runs" / "style").iterdir())
    record = json.loads((run_dir / "record.json").read_text())
    assert record["pretrained"] is False and record["mode"] == "optimize"
    e = record["energy"]  # of the optimisation: this one image
    assert e["samples"] == 1 and e["joules_per_sample"] is None and e["cpu"]["joules"] is None
    assert e["cpu"]["reason"] == f"no {tmp_path / 'none'} (a VM without RAPL, or not Linux)"
    assert e["gpu"]["reason"] == "device is cpu: no GPU energy to read"
    assert 0 < e["cpu"]["seconds"] <= record["timing"]["seconds_per_image"]
    assert record["inputs"]["content"] == "bundled:china.jpg" and len(record["history"]) == 3
    assert {"stylized.png", "step_00002.png", "record.json"} <= {p.name for p in run_dir.iterdir()}
    again = run_cli(*args)
    assert again.code == 2 and "already exists; pass --force" in again.err
    assert run_cli(*args, "--force").code == 0


def _bad(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _truncated_jpeg(tmp_path):
    path = tmp_path / "full.jpg"
    bundled_photo("flower").save(path)
    return _bad(tmp_path, "cut.jpg", path.read_bytes()[:4000])


def _bomb(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 M pixels, a few kB on disk
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.jpg", "no such file"),
        (lambda p: _bad(p, "text.jpg", b"this is not a picture\n"), "is not an image file"),
        (lambda p: _bad(p, "empty.jpg", b""), "is empty (0 bytes)"),
        (_truncated_jpeg, "may be truncated"),
        (_bomb, "50,000,000 pixels"),
    ],
)
def test_bad_content_images(run_cli, tmp_path, make, message):
    out = tmp_path / "out.png"
    r = run_cli(
        "stylize",
        make(tmp_path),
        "--size",
        "64",
        "--steps",
        "1",
        "-o",
        out,
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not list((tmp_path / "runs").glob("style/*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--content-weight", "0", "--style-weight", "0"], "both 0"),
        (["--style-weight", "11"], "--style-weight must lie in 0..10"),
        (["--size", "16"], "--size must lie in 64..4096"),
        (["--size", "4096"], "use a smaller --size"),
        (["-o", "{tmp}/nofolder/out.png"], "does not exist"),
        (["-o", "{tmp}/out.gif2"], "cannot write images as .gif2"),
        (["--vgg-weights", "{tmp}/nope.pth"], "--vgg-weights"),
        (["--device", "tpu"], "unknown device"),
    ],
)
def test_bad_stylize_options(run_cli, tmp_path, args, message, monkeypatch):
    import psutil

    if "4096" in args:  # a machine with 4 GiB free: a 4096 px image needs far more
        monkeypatch.setattr(
            psutil, "virtual_memory", lambda: type("M", (), {"available": 4 * 2**30})()
        )
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli("stylize", "--steps", "1", "--size", "64", *args, "--out", tmp_path / "runs")
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("style/*"))


@pytest.mark.cuda
def test_gpu_stylize_fp32_and_bf16(vgg, images):
    cuda = torch.device("cuda")
    finals = {}
    for precision, graph in (("fp32", True), ("fp32", False), ("bf16", True)):
        cfg = StylizeConfig(size=128, steps=20, cuda_graph=graph)
        result = stylize(*images, vgg, cfg, cuda, resolve_precision(precision, cuda))
        assert result.history[-1]["total"] < result.history[0]["total"]
        assert result.timing["clock"] == "cuda events" and result.timing["cuda_graph"] is graph
        assert len(result.history) == 20  # the replayed steps are recorded one by one
        assert len({h["total"] for h in result.history[-5:]}) == 5  # not one step's copy
        finals[precision, graph] = result.history[-1]["total"]
    # the replayed step is the eager step (fused Adam rounds a little differently)
    assert finals["fp32", True] == pytest.approx(finals["fp32", False], rel=1e-2)


# -- feed-forward mode ---------------------------------------------------------------------------


def test_data_images_writes_crops(run_cli, tmp_path):
    r = run_cli("data", "images", "--out", tmp_path / "imgs", "--count", "3", "--size", "32")
    assert r.code == 0 and "wrote 3 images of 32x32" in r.out
    files = sorted((tmp_path / "imgs").iterdir())
    assert [f.name for f in files] == ["crop_00000.jpg", "crop_00001.jpg", "crop_00002.jpg"]
    assert all(Image.open(f).size == (32, 32) for f in files)


def test_feed_forward_training_round_trip(run_cli, tmp_path):
    r = run_cli("data", "images", "--out", tmp_path / "imgs", "--count", "4", "--size", "80")
    painting = tmp_path / "style.png"
    generated_painting(64).save(painting)
    r = run_cli(
        "train",
        "style",
        "--preset",
        "debug",
        "--set",
        f"images={tmp_path / 'imgs'}",
        "--set",
        f"style={painting}",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        "--quiet",
    )
    assert r.code == 0, r.err
    run_dir = tmp_path / "runs" / "style" / r.out.strip().splitlines()[-1].split("/")[-1]
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "complete" and record["pretrained"] is False
    assert (
        record["config"]["images"] == str(tmp_path / "imgs")
        and record["timing"]["samples_per_s"] > 0
    )
    m = record["metrics"]
    assert (
        m["inference_images_per_s"] > 0
        and np.isfinite(m["eval_total"])
        and m["style"] == str(painting)
    )
    assert (run_dir / "sample.png").is_file() and (run_dir / "checkpoint.pt").is_file()
    # the checkpoint stylizes an image of another size (sides not multiples of 4)
    odd = tmp_path / "odd.png"
    bundled_photo("flower").resize((50, 37)).save(odd)
    r = run_cli(
        "predict", "style", odd, "--run", run_dir, "-o", tmp_path / "odd_out.png", "--device", "cpu"
    )
    assert r.code == 0, r.err
    assert Image.open(tmp_path / "odd_out.png").size == (50, 37)
    # a folder in, a folder out
    r = run_cli("predict", "style", tmp_path / "imgs", "--run", run_dir, "-o", tmp_path / "styled")
    assert r.code == 0 and "4 images" in r.out
    assert sorted(p.name for p in (tmp_path / "styled").iterdir())[0] == "crop_00000.png"


def test_feed_forward_losses_fall(tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.registry import get_workload

    cfg = get_workload("style").config("debug", {"count": "8", "epochs": "6", "eval_every": "4"})
    result = train("style", cfg, TrainOptions(device="cpu", out=tmp_path, quiet=True))
    totals = [h["eval_total"] for h in result.record.history]
    assert len(totals) == 6 and totals[-1] < 0.7 * totals[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "images={tmp}/nothing"], "is not a folder"),
        (["--set", "images={tmp}"], "holds no .jpg/.png images"),
        (["--set", "style={tmp}/missing.png"], "no such file"),
        (["--set", "style_weight=12"], "style_weight must lie in 0..10"),
        (["--set", "style_weight=heavy"], "--set style_weight=heavy: style_weight must be float"),
        (["--set", "size=66"], "size must be a multiple of 4"),
    ],
)
def test_bad_style_training_input(run_cli, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(
        "train", "style", "--preset", "debug", "--device", "cpu", "--out", tmp_path / "runs", *args
    )
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("style/*"))


def test_predict_style_needs_a_style_run(run_cli, tmp_path, write_record_json):
    r = run_cli("predict", "style", tmp_path, "--run", tmp_path, "-o", tmp_path / "o")
    assert r.code == 2 and "is not a gpulab run" in r.err
    digits_run = tmp_path / "digits" / "r"
    write_record_json(digits_run, workload="digits")
    r = run_cli("predict", "style", tmp_path, "--run", digits_run, "-o", tmp_path / "o")
    assert r.code == 2 and r.err == (
        f"gpulab: error: {digits_run} is a digits run, not a style run; "
        "pass a `gpulab train style` run\n"
    )


def test_stylize_has_no_model_option_any_more(run_cli, tmp_path):
    r = run_cli("stylize", tmp_path, "--model", tmp_path, "-o", tmp_path / "o")
    assert r.code == 2 and "No such option: --model" in r.err


@pytest.mark.cuda
def test_gpu_feed_forward_training(tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.registry import get_workload

    cfg = get_workload("style").config("debug")
    for precision in ("fp32", "auto"):
        result = train(
            "style", cfg, TrainOptions(device="cuda", precision=precision, out=tmp_path, quiet=True)
        )
        expected = "fp32" if precision == "fp32" else "bf16"  # auto: bf16 on GPUs that have it
        assert result.record.options.precision == expected
        assert np.isfinite(result.record.metrics["eval_total"])
        assert result.record.metrics["inference_images_per_s"] > 0
        assert result.record.options.cuda_graph is True
