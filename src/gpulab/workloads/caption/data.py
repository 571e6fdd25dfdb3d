"""Caption data: vocabulary, caption files (COCO-style JSON or CSV), generated scenes, the
image split.

COCO style: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}. CSV
(Flickr8k's captions.txt): a header row naming `image` and `caption`, one row per caption. Image
files under one folder. The split is by image: no image is in both train and test.
"""

import csv
import io
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gpulab.data import LoaderBatches
from gpulab.data.batches import loader_workers
from gpulab.data.images import open_image, save_image
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write_json, ensure_writable_dir
from gpulab.workloads.caption import scenes as scene_gen
from gpulab.workloads.caption.features import cached_features
from gpulab.workloads.caption.model import load_backbone
from gpulab.workloads.caption.scenes import Thing

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass
class Vocabulary:
    words: list[str]  # index -> word; the four specials first

    @classmethod
    def build(cls, captions: list[str], min_count: int = 1) -> "Vocabulary":
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted(w for w, n in counts.items() if n >= min_count)
        return cls([PAD, START, END, UNK, *kept])

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_words: int) -> list[int]:
        """<start> w1 .. wn <end>, cut to max_words words, unknown words as <unk>."""
        ids = [self.index.get(w, self.index[UNK]) for w in tokenize(caption)[:max_words]]
        return [self.index[START], *ids, self.index[END]]

    def decode(self, ids) -> str:
        words = []
        for i in ids:
            w = self.words[int(i)]
            if w == END:
                break
            if w not in (PAD, START):
                words.append(w)
        return " ".join(words)


@dataclass
class CaptionSet:
    """Images (as paths or in memory) with their reference captions, and scene facts if known."""

    names: list[str]
    captions: list[list[str]]
    paths: list[Path] | None = None
    images: list[Image.Image] | None = None
    scenes: list[list[Thing]] | None = None

    def image(self, i: int, at_least: int | None = None) -> Image.Image:
        """Image i; from a file, decoded no larger than `at_least` needs (see open_image)."""
        if self.images is not None:
            return self.images[i]
        return open_image(self.paths[i], at_least=at_least)

    def subset(self, idx) -> "CaptionSet":
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return CaptionSet(
            pick(self.names),
            pick(self.captions),
            pick(self.paths),
            pick(self.images),
            pick(self.scenes),
        )


def generate_scenes(count: int, size: int, seed: int) -> CaptionSet:
    rng = np.random.default_rng(seed)
    names, caps, images, things = [], [], [], []
    for i in range(count):
        scene = scene_gen.random_scene(rng)
        images.append(scene_gen.draw_scene(scene, size, rng))
        caps.append(scene_gen.captions(scene, rng))
        names.append(f"scene_{i:06d}.png")
        things.append(scene)
    return CaptionSet(names, caps, images=images, scenes=things)


def write_coco(data: CaptionSet, out: Path) -> Path:
    """images/ plus captions.json in COCO style; returns the JSON's path."""
    ensure_writable_dir(out / "images")
    for i, name in enumerate(data.names):
        save_image(data.image(i), out / "images" / name)
    doc = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(data.names)],
        "annotations": [
            {"id": k, "image_id": i, "caption": c}
            for k, (i, c) in enumerate((i, c) for i, cs in enumerate(data.captions) for c in cs)
        ],
    }
    atomic_write_json(out / "captions.json", doc)
    return out / "captions.json"


def _bad(path: Path, problem: str, line: int | None = None) -> GpulabError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return GpulabError(
        f"{where}: {problem}; the file needs to be a COCO-style JSON with 'images' (id, "
        "file_name) and 'annotations' (image_id, caption), or a CSV whose header row names "
        "the columns image and caption"
    )


def read_captions(path: Path, image_dir: Path, skip_bad: bool = False) -> tuple[CaptionSet, int]:
    """Checked captions from a COCO-style JSON or an image,caption CSV (Flickr8k's
    captions.txt), told apart by content: JSON starts with `{`. Returns the set and how many
    bad images were skipped."""
    path, image_dir = Path(path), Path(image_dir)
    if not path.is_file():
        raise GpulabError(
            f"no such file: {path}; pass --set data=FILE with a COCO-style captions JSON "
            "or an image,caption CSV"
        )
    if not image_dir.is_dir():
        raise GpulabError(
            f"images={image_dir} is not a folder; pass --set images=DIR, the folder the images are in"
        )
    text = _utf8_text(path)
    if not text.strip():
        raise _bad(path, "the file is empty")
    parse = _coco_captions if text.lstrip().startswith("{") else _csv_captions
    files, caps = parse(path, text)
    if not caps:
        raise _bad(path, "no captions")
    return _with_images(path, image_dir, files, caps, skip_bad)


def _utf8_text(path: Path) -> str:
    """The file as text: UTF-8 with or without a byte-order mark."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise GpulabError(
            f"{path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; save the file as "
            "UTF-8 text"
        ) from None


def _coco_captions(path: Path, text: str) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Image file names and captions by image id from COCO-style JSON text."""
    try:
        doc = json.loads(text)
        files = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        pairs = [(int(a["image_id"]), a["caption"]) for a in doc["annotations"]]
    except json.JSONDecodeError as e:
        raise _bad(path, f"not valid JSON ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(path, f"missing or malformed field {e}") from None
    caps: dict[int, list[str]] = {}
    for image_id, text in pairs:
        if not isinstance(text, str) or not tokenize(text):
            raise _bad(path, f"an empty caption for image {image_id}")
        if image_id not in files:
            raise _bad(path, f"a caption for image {image_id}, which 'images' does not list")
        caps.setdefault(image_id, []).append(text)
    return files, caps


def _csv_captions(path: Path, text: str) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Image file names and captions by image id (order of first appearance) from CSV text
    with a header row naming `image` and `caption` among its columns, one row per caption."""
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(r for r in rows if r)]
        if "image" not in header or "caption" not in header:
            found = ", ".join(repr(h) for h in header)
            problem = f"the header row has the columns {found}, not both image and caption"
            raise _bad(path, problem, rows.line_num)
        at_image, at_caption = header.index("image"), header.index("caption")
        ids: dict[str, int] = {}
        caps: dict[int, list[str]] = {}
        line = rows.line_num
        for row in rows:
            line, first = rows.line_num, line + 1  # a quoted caption may span lines
            if not any(field.strip() for field in row):
                continue
            name = row[at_image].strip() if at_image < len(row) else ""
            caption = row[at_caption] if at_caption < len(row) else ""
            if not name or not tokenize(caption):
                problem = f"an empty caption for image {name}" if name else "no image name"
                raise GpulabError(
                    f"{path}, line {first}: {problem}; give every row an image file name and "
                    "a caption, or delete the row"
                )
            caps.setdefault(ids.setdefault(name, len(ids)), []).append(caption)
    except csv.Error as e:
        raise _bad(path, f"not readable as CSV ({e})", rows.line_num) from None
    return {i: name for name, i in ids.items()}, caps


def _with_images(annotations, image_dir, files, caps, skip_bad) -> tuple[CaptionSet, int]:
    names, captions, paths = [], [], []
    missing = [files[i] for i in caps if not (image_dir / files[i]).is_file()]
    if len(missing) == len(caps):
        raise GpulabError(
            f"images={image_dir} holds none of the files {annotations} names "
            f"(first: {missing[0]}); pass the right folder"
        )
    ids = sorted(caps)
    candidates = [image_dir / files[i] for i in ids]
    with ThreadPoolExecutor(loader_workers(None)) as pool:  # Pillow decodes without the GIL
        problems = list(pool.map(_decode_problem, candidates))
    bad = [p for p in problems if p is not None]
    if bad and not skip_bad:
        n = len(bad) - 1
        more = f"; {n} more bad image{'s' if n > 1 else ''}" if n else ""
        raise GpulabError(f"{bad[0]}{more} (pass --set skip_bad=true to train without such images)")
    for image_id, path, problem in zip(ids, candidates, problems):
        if problem is None:
            names.append(files[image_id])
            captions.append(caps[image_id])
            paths.append(path)
    if not names:
        raise GpulabError(f"no readable images among those {annotations} names")
    return CaptionSet(names, captions, paths=paths), len(bad)


def _decode_problem(path: Path) -> str | None:
    """What is wrong with an image file, or None: only whether it decodes, at the cheapest
    scale."""
    try:
        open_image(path, at_least=1)
    except GpulabError as e:
        return str(e)
    return None


def split_by_image(
    data: CaptionSet, test_fraction: float, seed: int
) -> tuple[CaptionSet, CaptionSet]:
    order = np.random.default_rng(seed).permutation(len(data.names))
    n_test = max(1, int(round(len(order) * test_fraction)))
    if len(order) - n_test < 1:
        raise GpulabError(f"only {len(order)} images: too few to hold {n_test} out for testing")
    return data.subset(sorted(order[n_test:])), data.subset(sorted(order[:n_test]))


def image_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) uint8 pixels: the encoders' input (a quarter of float32's memory)."""
    pixels = np.array(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class CaptionPairs(Dataset):
    """One sample per (image, caption): the image's input row and a fixed-length token row."""

    def __init__(self, inputs: torch.Tensor, data: CaptionSet, vocab: Vocabulary, max_words: int):
        self.inputs = inputs  # (N, 3, S, S) uint8 pixels, or (N, D) backbone features
        self.rows = [(i, c) for i, caps in enumerate(data.captions) for c in caps]
        self.vocab, self.length = vocab, max_words + 2

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        i, caption = self.rows[k]
        ids = self.vocab.encode(caption, self.length - 2)
        tokens = torch.zeros(self.length, dtype=torch.long)  # <pad> = 0
        tokens[: len(ids)] = torch.tensor(ids)
        return self.inputs[i], tokens


@dataclass
class CaptionData:
    train: LoaderBatches
    vocab: Vocabulary
    test: CaptionSet
    test_inputs: torch.Tensor  # (N, ...) on the device: pixels or backbone features
    eval_batch: tuple[torch.Tensor, torch.Tensor]  # fixed test pairs for the periodic loss
    max_words: int
    beam: int
    skipped: int = 0
    feature_dim: int | None = None  # backbone feature size; None for the small encoder
    encoder: dict | None = None  # backbone, pretrained, weights, whether features were cached


def load_caption_set(cfg) -> tuple[CaptionSet, int]:
    if cfg.data:
        if not cfg.images:
            raise GpulabError(
                "--set data=FILE needs --set images=DIR, the folder its file names are in"
            )
        return read_captions(Path(cfg.data), Path(cfg.images), cfg.skip_bad)
    return generate_scenes(cfg.count, cfg.image_size, cfg.seed), 0


class CaptionImages(Dataset):
    """Image i of a caption set as (3, S, S) uint8 pixels, decoded when asked for, so that a
    large set need never be held whole."""

    def __init__(self, data: CaptionSet, size: int):
        self.data, self.size = data, size

    def __len__(self) -> int:
        return len(self.data.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        return image_tensor(self.data.image(i, at_least=self.size), self.size)

    def fingerprint(self, h) -> None:
        """Feed hashlib object `h` everything the pixels depend on: the size and, per image,
        its file's path, length and modification time, or its pixels when held in memory."""
        h.update(f"{len(self)} images at {self.size} px".encode())
        if self.data.images is not None:
            for img in self.data.images:
                h.update(f"{img.mode}{img.size}".encode())
                h.update(img.tobytes())
            return
        for path in self.data.paths:
            st = Path(path).stat()
            h.update(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())

    def batches(self, indices, batch: int = 64):
        """(B, 3, S, S) batches of the images `indices`, in that order; files are decoded by
        worker processes."""
        workers = loader_workers(None) if self.data.images is None else 0
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self, list(indices)),
            batch,
            num_workers=workers,
            generator=torch.Generator(),  # leaves the global RNG, hence the model's init, alone
        )
        yield from loader


def pixels_of(data: CaptionSet, size: int) -> torch.Tensor:
    """Every image of the set as (N, 3, S, S) uint8 pixels."""
    images = CaptionImages(data, size)
    return torch.cat(list(images.batches(range(len(images)))))


def model_inputs(
    cfg, train_set, test_set, device, dist
) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """Pixels for the small encoder; for a backbone its features, computed once and cached
    (streamed from the images: the pixels of the whole set are never held at once)."""
    if cfg.encoder == "small":
        return pixels_of(train_set, cfg.image_size), pixels_of(test_set, cfg.image_size), None
    weights = Path(cfg.encoder_weights) if cfg.encoder_weights else None
    backbone, pretrained, source = load_backbone(cfg.encoder, weights, cfg.seed)
    feats = [
        cached_features(
            backbone,
            cfg.encoder,
            source,
            cfg.seed,
            CaptionImages(part_set, cfg.image_size),
            device,
            dist,
            f"encode {part}",
        )
        for part, part_set in (("train", train_set), ("test", test_set))
    ]
    info = {
        "backbone": cfg.encoder,
        "pretrained": pretrained,
        "weights": source,
        "features_from_cache": all(hit for _, hit in feats),
    }
    return feats[0][0], feats[1][0], info


def build_caption_data(cfg, device: torch.device, dist: DistInfo) -> CaptionData:
    full, skipped = load_caption_set(cfg)
    train_set, test_set = split_by_image(full, cfg.test_fraction, cfg.seed)
    vocab = Vocabulary.build([c for caps in train_set.captions for c in caps], cfg.min_word_count)
    train_in, test_in, encoder = model_inputs(cfg, train_set, test_set, device, dist)
    pairs = CaptionPairs(train_in, train_set, vocab, cfg.max_words)
    train = LoaderBatches(pairs, cfg.batch_size, dist, cfg.seed, device)
    test_pairs = CaptionPairs(test_in, test_set, vocab, cfg.max_words)
    k = min(len(test_pairs), 256)
    eval_batch = tuple(torch.stack(t).to(device) for t in zip(*(test_pairs[i] for i in range(k))))
    return CaptionData(
        train,
        vocab,
        test_set,
        test_in.to(device),
        eval_batch,
        cfg.max_words,
        cfg.beam,
        skipped,
        None if encoder is None else train_in.shape[1],
        encoder,
    )
