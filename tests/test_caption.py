"""Captioning: vocabulary, masking, beam vs greedy, overfitting, COCO and CSV loading, DDP, bad
input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpulab.runtime import GpulabError
from gpulab.train import TrainOptions, train
from gpulab.workloads.caption.data import (
    END,
    START,
    Vocabulary,
    generate_scenes,
    read_captions,
    split_by_image,
    write_coco,
)
from gpulab.workloads.caption.model import Captioner, beam_search, caption_loss, greedy
from gpulab.workloads.caption.scenes import names_every_object
from gpulab.workloads.caption.workload import bleu_scores
from gpulab.workloads.registry import get_workload


def test_vocabulary_round_trip():
    vocab = Vocabulary.build(["A red circle.", "a blue Square", "a red square"])
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    ids = vocab.encode("a red circle", max_words=15)
    assert ids[0] == vocab.index[START] and ids[-1] == vocab.index[END]
    assert vocab.decode(ids) == "a red circle"
    assert vocab.decode(vocab.encode("a green circle", 15)) == "a <unk> circle"
    assert vocab.decode(vocab.encode("a red circle and a blue square", 3)) == "a red circle"
    assert Vocabulary(list(vocab.words)).encode("a blue square", 15) == vocab.encode(
        "a blue square", 15
    )
    assert Vocabulary.build(["a a b"], min_count=2).words[4:] == ["a"]


def test_padding_does_not_change_the_loss():
    torch.manual_seed(0)
    model = Captioner(12, embed=8, hidden=8, width=4).eval()
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 4, 5, 6, 2]])
    longer = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    a = caption_loss(model(images, tokens), tokens)
    b = caption_loss(model(images, longer), longer)
    assert torch.allclose(a, b, atol=1e-6)


def test_beam_of_one_equals_greedy():
    torch.manual_seed(1)
    model = Captioner(20, embed=16, hidden=16, width=4).eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    greedy_ids, greedy_logp = greedy(model, images, start=1, end=2, max_words=6)
    for i in range(4):
        ids, logp = beam_search(model, images[i : i + 1], start=1, end=2, max_words=6, beam=1)
        assert ids == greedy_ids[i]
        assert logp == pytest.approx(greedy_logp[i], abs=1e-4)


def test_bleu_against_several_references():
    refs = [
        ["a red circle", "there is a red circle"],
        ["a blue square to the left of a green circle"],
    ]
    perfect = bleu_scores(["a red circle", "a blue square to the left of a green circle"], refs)
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    wrong = bleu_scores(["a green triangle", "a yellow circle"], refs)
    assert wrong["bleu4"] < 0.1 and wrong["bleu1"] < perfect["bleu1"]


def test_scene_captions_name_every_object():
    data = generate_scenes(30, 32, seed=4)
    assert all(len(c) == 5 for c in data.captions)
    assert all(
        names_every_object(c, s) for caps, s in zip(data.captions, data.scenes) for c in caps
    )
    assert all(1 <= len(s) <= 3 for s in data.scenes)
    assert all(len(c.split()) <= 15 for caps in data.captions for c in caps)
    assert not names_every_object("a shape", data.scenes[0])


def test_a_tiny_model_overfits_a_few_scenes():
    from gpulab.workloads.caption.data import CaptionPairs, pixels_of

    torch.manual_seed(0)
    data = generate_scenes(6, 32, seed=5)
    vocab = Vocabulary.build([c for caps in data.captions for c in caps])
    pairs = CaptionPairs(pixels_of(data, 32), data, vocab, max_words=15)
    images = torch.stack([pairs[k][0] for k in range(len(pairs))])
    tokens = torch.stack([pairs[k][1] for k in range(len(pairs))])
    model = Captioner(len(vocab), embed=32, hidden=64, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss = caption_loss(model(images, tokens), tokens)
        loss.backward()
        opt.step()
    model.eval()
    ids, _ = greedy(model, pairs.inputs, vocab.index[START], vocab.index[END], 15)
    hypotheses = [vocab.decode(i) for i in ids]
    assert bleu_scores(hypotheses, data.captions)["bleu4"] > 0.9
    assert all(names_every_object(h, s) for h, s in zip(hypotheses, data.scenes))


def test_coco_loading_of_a_hand_written_fixture(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name, colour in (("a.png", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (20, 10), colour).save(tmp_path / "imgs" / name)
    doc = {
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 7, "caption": "A red picture."},
            {"image_id": 9, "caption": "a blue one"},
            {"image_id": 7, "caption": "all red"},
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(doc))
    data, skipped = read_captions(tmp_path / "c.json", tmp_path / "imgs")
    assert skipped == 0 and data.names == ["a.png", "b.jpg"]
    assert data.captions == [["A red picture.", "all red"], ["a blue one"]]
    assert data.image(1).size == (20, 10)


def test_data_captions_writes_coco_that_reads_back(run_cli, tmp_path):
    r = run_cli("data", "captions", "--count", "6", "--size", "32", "--out", tmp_path / "set")
    assert r.code == 0, r.err
    data, _ = read_captions(tmp_path / "set" / "captions.json", tmp_path / "set" / "images")
    assert len(data.names) == 6 and all(len(c) == 5 for c in data.captions)


def test_train_caption_and_caption_images(run_cli, tmp_path):
    write_coco(generate_scenes(40, 32, seed=2), tmp_path / "set")
    r = run_cli(
        "train",
        "caption",
        "--preset",
        "debug",
        "--set",
        f"data={tmp_path / 'set' / 'captions.json'}",
        "--set",
        f"images={tmp_path / 'set' / 'images'}",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        "--quiet",
    )
    assert r.code == 0, r.err
    run_dir = r.out.strip().splitlines()[-1].removeprefix("run: ")
    record = json.loads(
        (tmp_path / "runs" / "caption" / run_dir.split("/")[-1] / "record.json").read_text()
    )
    m = record["metrics"]
    assert {"bleu1_greedy", "bleu4_greedy", "bleu1_beam", "bleu4_beam"} <= set(m)
    assert all(0 <= m[k] <= 1 for k in ("bleu1_greedy", "bleu4_beam")) and m["test_images"] == 4
    assert len(m["examples"]) == 4 and {"image", "references", "greedy", "beam"} == set(
        m["examples"][0]
    )
    images = sorted((tmp_path / "set" / "images").iterdir())[:2]
    r = run_cli("predict", "caption", *images, "--run", run_dir, "--beam", "2", "--device", "cpu")
    assert r.code == 0, r.err
    lines = r.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: ") and "(log p = -" in lines[0]


def _coco(tmp_path, doc_text, files=("a.png",), bad=()):
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for name in files:
        Image.new("RGB", (16, 16), "red").save(folder / name)
    for name in bad:
        (folder / name).write_text("not an image")
    (tmp_path / "c.json").write_text(doc_text)
    return tmp_path / "c.json", folder


def _doc(images, annotations):
    return json.dumps({"images": images, "annotations": annotations})


ONE = [{"id": 1, "file_name": "a.png"}]


@pytest.mark.parametrize(
    "doc, files, bad, message",
    [
        ("{not json", ("a.png",), (), "not valid JSON"),
        (_doc(ONE, [{"image_id": 1}]), ("a.png",), (), "missing or malformed field 'caption'"),
        (
            _doc(ONE, [{"image_id": 1, "caption": "  "}]),
            ("a.png",),
            (),
            "an empty caption for image 1",
        ),
        (
            _doc(ONE, [{"image_id": 2, "caption": "x"}]),
            ("a.png",),
            (),
            "which 'images' does not list",
        ),
        (
            _doc([{"id": 1, "file_name": "z.png"}], [{"image_id": 1, "caption": "x"}]),
            (),
            (),
            "holds none of the files",
        ),
        (
            _doc(
                [*ONE, {"id": 2, "file_name": "b.png"}],
                [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"}],
            ),
            ("a.png",),
            ("b.png",),
            "pass --set skip_bad=true",
        ),
    ],
)
def test_bad_caption_data(run_cli, tmp_path, doc, files, bad, message):
    annotations, folder = _coco(tmp_path, doc, files, bad)
    r = run_cli(
        "train",
        "caption",
        "--preset",
        "debug",
        "--set",
        f"data={annotations}",
        "--set",
        f"images={folder}",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
    )
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("caption/*"))


def _train_cli(run_cli, tmp_path, data, images, *more):
    return run_cli(
        "train",
        "caption",
        "--preset",
        "debug",
        "--set",
        f"data={data}",
        "--set",
        f"images={images}",
        "--device",
        "cpu",
        "--out",
        tmp_path / "runs",
        *more,
    )


def test_a_csv_set_trains_and_holds_what_the_same_coco_json_holds(run_cli, tmp_path):
    scenes = generate_scenes(40, 32, seed=2)
    write_coco(scenes, tmp_path / "set")
    rows = [f"{n},{c}" for n, caps in zip(scenes.names, scenes.captions) for c in caps]
    (tmp_path / "set" / "captions.txt").write_text("\n".join(["image,caption", *rows]) + "\n")
    images = tmp_path / "set" / "images"
    from_csv, _ = read_captions(tmp_path / "set" / "captions.txt", images)
    from_json, _ = read_captions(tmp_path / "set" / "captions.json", images)
    assert from_csv.names == from_json.names == scenes.names
    assert from_csv.captions == from_json.captions == scenes.captions
    assert from_csv.paths == from_json.paths

    r = _train_cli(run_cli, tmp_path, tmp_path / "set" / "captions.txt", images, "--quiet")
    assert r.code == 0, r.err
    run_dir = Path(r.out.strip().splitlines()[-1].removeprefix("run: "))
    m = json.loads((tmp_path / "runs" / "caption" / run_dir.name / "record.json").read_text())[
        "metrics"
    ]
    _, test_set = split_by_image(from_json, 0.1, seed=0)  # the debug preset's fraction and seed
    assert m["test_images"] == len(test_set.names) == 4
    assert [(e["image"], e["references"]) for e in m["examples"]] == list(
        zip(test_set.names, test_set.captions)
    )


def _csv(tmp_path, content, files=("a.png", "b.png"), name="captions.txt"):
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    for f in files:
        Image.new("RGB", (16, 16), "red").save(folder / f)
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path, folder


def test_csv_captions_with_quoted_commas_any_column_order_and_crlf(tmp_path):
    path, folder = _csv(
        tmp_path,
        "id,caption,image\r\n"
        '1,"A red square, small, on the left",a.png\r\n'
        '2,"a caption ""quoted""\r\nover two lines",b.png\r\n'
        "\r\n"
        "3,all red, a.png\r\n",  # spaces around the image name are not part of it
    )
    data, skipped = read_captions(path, folder)
    assert skipped == 0 and data.names == ["a.png", "b.png"]
    assert data.captions == [
        ["A red square, small, on the left", "all red"],
        ['a caption "quoted"\r\nover two lines'],
    ]


def test_csv_captions_with_a_byte_order_mark(tmp_path):
    path, folder = _csv(tmp_path, "\ufeffimage,caption\na.png,un café rouge\n".encode())
    data, _ = read_captions(path, folder)
    assert data.names == ["a.png"] and data.captions == [["un café rouge"]]


def test_the_format_is_told_by_content_not_by_suffix(tmp_path):
    coco, folder = _csv(tmp_path, _doc(ONE, [{"image_id": 1, "caption": "x y"}]), name="c.txt")
    csv_in_json, _ = _csv(tmp_path, "\n  image,caption\na.png,x y\n", name="c.json")
    for path in (coco, csv_in_json):
        data, _ = read_captions(path, folder)
        assert data.names == ["a.png"] and data.captions == [["x y"]]


BOTH = (
    "COCO-style JSON with 'images' (id, file_name) and 'annotations' (image_id, caption), "
    "or a CSV whose header row names the columns image and caption"
)


@pytest.mark.parametrize(
    "content, files, message",
    [
        (
            "image_name,comment\na.png,x\n",
            ("a.png",),
            "captions.txt, line 1: the header row has the columns 'image_name', 'comment', "
            f"not both image and caption; the file needs to be a {BOTH}",
        ),
        (
            'image,caption\na.png,"two\nlines"\nb.png,  \n',
            ("a.png", "b.png"),
            "captions.txt, line 4: an empty caption for image b.png; give every row an image "
            "file name and a caption, or delete the row",
        ),
        ("image,caption\na.png\n", ("a.png",), "line 2: an empty caption for image a.png"),
        (
            'image,caption\n\na.png,x\nb.png," \n "\n',  # the bad row starts on line 4
            ("a.png", "b.png"),
            "line 4: an empty caption for image b.png",
        ),
        ("image,caption\n,x\n", ("a.png",), "line 2: no image name; give every row"),
        (
            "image,caption\n\n",
            ("a.png",),
            f"captions.txt: no captions; the file needs to be a {BOTH}",
        ),
        ("", ("a.png",), f"captions.txt: the file is empty; the file needs to be a {BOTH}"),
        (" \n\n", ("a.png",), "captions.txt: the file is empty"),
        (
            "image,caption\na.png,red\nb.png,caf\xe9\n".encode("latin-1"),
            ("a.png", "b.png"),
            "captions.txt, line 3: byte 0xe9 is not UTF-8; save the file as UTF-8 text",
        ),
        (
            'image,caption\na.png,x\na.png,"' + "w " * 70_000 + '"\n',
            ("a.png",),
            "captions.txt, line 3: not readable as CSV (field larger than field limit",
        ),
        ("image,caption\nz.png,x\n", ("a.png",), "holds none of the files"),
        ("image,caption\na.png,x\nbad.png,y\n", ("a.png",), "(pass --set skip_bad=true"),
    ],
)
def test_bad_caption_csv(run_cli, tmp_path, content, files, message):
    path, folder = _csv(tmp_path, content, files)
    (folder / "bad.png").write_text("not an image")  # named by one case only
    r = _train_cli(run_cli, tmp_path, path, folder)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not list((tmp_path / "runs").glob("caption/*"))


def test_no_such_caption_file_names_both_formats(run_cli, tmp_path):
    (tmp_path / "imgs").mkdir()
    r = _train_cli(run_cli, tmp_path, tmp_path / "captions.txt", tmp_path / "imgs")
    assert r.code == 2 and r.err.strip().endswith(
        "captions.txt; pass --set data=FILE with a COCO-style captions JSON or an image,caption CSV"
    )


def test_skip_bad_trains_without_broken_images(tmp_path):
    data = generate_scenes(12, 32, seed=1)
    write_coco(data, tmp_path / "set")
    for i in (3, 7):
        (tmp_path / "set" / "images" / data.names[i]).write_bytes(b"truncated")
    with pytest.raises(GpulabError, match="skip_bad=true") as e:
        read_captions(tmp_path / "set" / "captions.json", tmp_path / "set" / "images")
    assert data.names[3] in str(e.value) and "; 1 more bad image (pass" in str(e.value)
    kept, skipped = read_captions(
        tmp_path / "set" / "captions.json", tmp_path / "set" / "images", skip_bad=True
    )
    assert skipped == 2 and kept.names == [n for i, n in enumerate(data.names) if i not in (3, 7)]
    assert [str(p) for p in kept.paths] == [
        str(tmp_path / "set" / "images" / n) for n in kept.names
    ]
    assert kept.captions == [c for i, c in enumerate(data.captions) if i not in (3, 7)]


def test_a_checkpoint_of_another_model_shape_is_refused(run_cli, tmp_path):
    r = run_cli(
        "train", "caption", "--preset", "debug", "--device", "cpu", "--out", tmp_path, "--quiet"
    )
    run_dir = Path(r.out.strip().splitlines()[-1].removeprefix("run: "))
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ck["config"]["width"] = 16  # as if an older gpulab had trained another encoder
    torch.save(ck, run_dir / "checkpoint.pt")
    image = next((tmp_path / "caption").glob("*/record.json")).parent / "x.png"
    Image.new("RGB", (32, 32), "red").save(image)
    r = run_cli("predict", "caption", image, "--run", run_dir)
    assert r.code == 2 and "its weights do not fit this gpulab's model" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_predict_caption_bad_input(run_cli, tmp_path, write_record_json):
    r = run_cli("predict", "caption", tmp_path / "x.png", "--run", tmp_path)
    assert r.code == 2 and "is not a gpulab run" in r.err
    stocks_run = tmp_path / "stocks" / "r"
    write_record_json(stocks_run, workload="stocks")
    r = run_cli("predict", "caption", tmp_path / "x.png", "--run", stocks_run)
    assert r.code == 2 and r.err == (
        f"gpulab: error: {stocks_run} is a stocks run, not a caption run; "
        f"use gpulab predict stocks --run {stocks_run}\n"
    )
    r = run_cli("predict", "caption", tmp_path / "x.png", "--run", stocks_run, "--beam", "0")
    assert r.code == 2 and "--beam must be at least 1" in r.err


def test_two_gloo_processes_match_one(tmp_path, torchrun):
    r = torchrun(
        2,
        "train",
        "caption",
        "--preset",
        "debug",
        "--device",
        "cpu",
        "--out",
        tmp_path / "ddp",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (ddp_run,) = [p for p in (tmp_path / "ddp" / "caption").iterdir() if p.is_dir()]
    record = json.loads((ddp_run / "record.json").read_text())
    assert record["options"]["world_size"] == 2
    single = train(
        "caption",
        get_workload("caption").config("debug"),
        TrainOptions(device="cpu", out=tmp_path / "one", quiet=True),
    )
    a = [h["train_loss"] for h in single.record.history]
    b = [h["train_loss"] for h in record["history"]]
    # The same global batches, but the encoder's BatchNorm takes its statistics over each
    # process's half batch on the CPU (gloo has no SyncBatchNorm): agreement within 5%.
    assert np.allclose(a, b, rtol=0.05) and not np.allclose(a[0], 0)


@pytest.mark.cuda
def test_gpu_caption_training(tmp_path):
    cfg = get_workload("caption").config("debug")
    gpu = train("caption", cfg, TrainOptions(device="cuda", out=tmp_path / "gpu", quiet=True))
    cpu = train("caption", cfg, TrainOptions(device="cpu", out=tmp_path / "cpu", quiet=True))
    assert gpu.record.options.device.startswith("cuda")
    # the same seed and batches: the GPU (bf16 autocast by default) learns as the CPU does
    a = [h["test_loss"] for h in gpu.record.history]
    b = [h["test_loss"] for h in cpu.record.history]
    assert len(a) == len(b) and np.allclose(a, b, rtol=0.05)
    assert a[-1] < a[0] - 0.2  # it learned: about 3.5 -> 3.0 on the CPU


def test_workers_killed_mid_run_resume_after_torchrun_restarts_them(tmp_path, torchrun):
    r = torchrun(
        2,
        "train",
        "caption",
        "--preset",
        "debug",
        "--device",
        "cpu",
        "--out",
        tmp_path,
        "--quiet",
        launcher=["--max-restarts=1"],
        env={"GPULAB_FAIL_AT_STEP": "20"},
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (run_dir,) = [p for p in (tmp_path / "caption").iterdir() if p.is_dir()]
    record = json.loads((run_dir / "record.json").read_text())
    steps_per_epoch = record["position"]["global_step"] // 2
    assert record["status"] == "complete"
    assert record["options"]["resumed_from_step"] == steps_per_epoch  # the epoch-1 checkpoint
    assert steps_per_epoch < 20  # the failure came after that checkpoint


# -- frozen torchvision backbones with cached features -------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("vgg16", 4096), ("resnet18", 512), ("resnet50", 2048)])
def test_backbones_give_one_feature_vector_per_image(name, dim):
    from gpulab.workloads.caption.model import load_backbone

    backbone, pretrained, source = load_backbone(name, None, seed=0)
    feats = backbone(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, dim) and backbone.dim == dim and not feats.requires_grad
    assert pretrained is False and source == "random initialisation"
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.train().training  # frozen: always in eval mode


def test_backbone_weights_from_a_file_are_used(tmp_path):
    import torchvision

    from gpulab.workloads.caption.model import load_backbone

    torch.manual_seed(7)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    backbone, pretrained, source = load_backbone("resnet18", tmp_path / "r18.pth", seed=0)
    assert pretrained is True and source == str(tmp_path / "r18.pth")
    net.fc = torch.nn.Identity()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(backbone(x), net.eval()((x / 255 - mean) / std), atol=1e-5)
    (tmp_path / "bad.pth").write_text("not weights")
    with pytest.raises(GpulabError, match="not a readable torch state dict"):
        load_backbone("resnet18", tmp_path / "bad.pth", seed=0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alex.pth")
    with pytest.raises(GpulabError, match="does not fit ResNet18"):
        load_backbone("resnet18", tmp_path / "alex.pth", seed=0)


def _run(r, runs):
    assert r.code == 0, r.err
    run_dir = Path(r.out.strip().splitlines()[-1].removeprefix("run: "))
    return run_dir, json.loads((runs / "caption" / run_dir.name / "record.json").read_text())


def test_backbone_features_are_computed_once_and_cached(run_cli, tmp_path, private_cache):
    runs = tmp_path / "runs"
    args = ["train", "caption", "--preset", "debug", "--set", "encoder=resnet18", "--device", "cpu"]
    r = run_cli(*args, "--out", runs, "--quiet")
    run_dir, record = _run(r, runs)
    assert "NOT pretrained (random)" in r.out
    enc = record["metrics"]["encoder"]
    assert enc == {
        "backbone": "resnet18",
        "pretrained": False,
        "weights": "random initialisation",
        "features_from_cache": False,
    }
    assert record["pretrained"] is False and record["config"]["encoder"] == "resnet18"
    assert len(list((private_cache / "caption-features").glob("resnet18-*.pt"))) == 2
    _, again = _run(run_cli(*args, "--out", runs, "--quiet"), runs)
    assert again["metrics"]["encoder"]["features_from_cache"] is True
    assert again["history"][-1]["train_loss"] == record["history"][-1]["train_loss"]

    write_coco(generate_scenes(2, 32, seed=9), tmp_path / "new")
    images = sorted((tmp_path / "new" / "images").iterdir())
    r = run_cli("predict", "caption", *images, "--run", run_dir, "--device", "cpu")
    assert r.code == 0, r.err
    assert len(r.out.strip().splitlines()) == 2 and "(log p = -" in r.out


def test_unknown_encoder_is_refused(run_cli, tmp_path):
    r = run_cli("train", "caption", "--set", "encoder=vgg99", "--out", tmp_path)
    assert r.code == 2 and "encoder must be one of small, vgg16, resnet18, resnet50" in r.err


def test_two_processes_share_the_encoding_and_gather_every_feature(tmp_path, torchrun):
    from gpulab.workloads.caption.data import CaptionImages, pixels_of, split_by_image
    from gpulab.workloads.caption.features import cache_key
    from gpulab.workloads.caption.model import load_backbone

    cache = tmp_path / "cache"
    r = torchrun(
        2,
        *("train", "caption", "--preset", "debug", "--set", "encoder=resnet18", "--device", "cpu"),
        *("--out", tmp_path / "runs", "--quiet"),
        env={"GPULAB_CACHE": str(cache)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = get_workload("caption").config("debug")
    train_set, _ = split_by_image(generate_scenes(cfg.count, 32, 0), cfg.test_fraction, 0)
    pixels = pixels_of(train_set, 32)
    key = cache_key("resnet18", "random initialisation", 0, CaptionImages(train_set, 32))
    gathered = torch.load(cache / "caption-features" / f"resnet18-{key}.pt")
    backbone, _, _ = load_backbone("resnet18", None, seed=0)
    assert torch.allclose(gathered, backbone(pixels), atol=1e-4)


def test_time_to_quality_measures_greedy_bleu_only_when_asked(tmp_path):
    cfg = get_workload("caption").config("debug")
    plain = train("caption", cfg, TrainOptions(device="cpu", out=tmp_path / "a", quiet=True))
    assert plain.record.quality is None  # BLEU is not measured at every evaluation
    ttq = train(
        "caption",
        cfg,
        TrainOptions(device="cpu", out=tmp_path / "b", quiet=True, stop_at_quality=True),
    )
    q = ttq.record.quality
    assert q.metric == "bleu4_greedy" and q.target == 0.5 and q.reached is False
    scores = [row["bleu4_greedy"] for row in ttq.record.history]
    assert len(scores) >= 2 and all(0 <= s <= 1 for s in scores)
    assert ttq.record.status == "complete"


def test_feature_cache_key_follows_every_image_and_the_size(tmp_path):
    import os

    from gpulab.workloads.caption.data import CaptionImages, pixels_of
    from gpulab.workloads.caption.features import cache_key

    scenes = generate_scenes(6, 32, seed=4)
    write_coco(scenes, tmp_path / "set")
    files, _ = read_captions(tmp_path / "set" / "captions.json", tmp_path / "set" / "images")

    def key(data, size=32):
        return cache_key("resnet18", "random initialisation", 0, CaptionImages(data, size))

    # read from files by worker processes, the pixels are those of the images in memory
    assert torch.equal(pixels_of(files, 32), pixels_of(scenes, 32))
    first = key(files)
    assert key(files) == first and key(files, 48) != first
    target = files.paths[2]
    Image.new("RGB", (32, 32), "red").save(target)
    os.utime(target, ns=(1, 1))  # whatever the clock says, the file changed
    assert key(files) != first
    in_memory = key(scenes)
    scenes.images[0].putpixel((0, 0), (1, 2, 3))
    assert key(scenes) != in_memory
