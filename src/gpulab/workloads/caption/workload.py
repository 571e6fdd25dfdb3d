"""The `caption` workload spec, its BLEU report, and `gpulab predict caption IMAGE... --run RUN`."""

from pathlib import Path

import torch
from torch import nn

from gpulab.data.images import open_image
from gpulab.runtime.checkpoint import load_weights
from gpulab.runtime.device import resolve_device
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.pretrained import cached_weights_path
from gpulab.workloads.base import QualityTarget, Workload, load_trained
from gpulab.workloads.caption import config
from gpulab.workloads.caption.data import (
    END,
    START,
    CaptionData,
    Vocabulary,
    build_caption_data,
    image_tensor,
)
from gpulab.workloads.caption.model import (
    BACKBONES,
    Backbone,
    Captioner,
    beam_search,
    caption_loss,
    greedy,
    load_backbone,
)
from gpulab.workloads.caption.scenes import names_every_object


class CaptionWorkload(Workload):
    name = "caption"
    summary = "Show and Tell captioner: CNN encoder, LSTM decoder, BLEU on held-out images"
    config_cls = config.CaptionConfig
    can_predict = True
    key_metric = "bleu4_beam"
    higher_is_better = True

    def presets(self):
        return {"default": config.default(), "debug": config.debug()}

    def build_data(self, cfg, device, dist) -> CaptionData:
        return build_caption_data(cfg, device, dist)

    def build_model(self, cfg, data: CaptionData) -> nn.Module:
        return Captioner(len(data.vocab), cfg.embed, cfg.hidden, cfg.width, data.feature_dim)

    def build_optimizer(self, cfg, model, capturable):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, capturable=capturable, fused=True)

    def loss(self, model, batch, data=None):
        images, tokens = batch
        return caption_loss(model(images, tokens), tokens)

    def evaluate(self, model, data: CaptionData):
        images, tokens = data.eval_batch
        return {"test_loss": caption_loss(model(images, tokens), tokens)}

    def quality_target(self, cfg) -> QualityTarget:
        return QualityTarget("bleu4_greedy", 0.5, higher_is_better=True)

    def quality_eval(self, model, data: CaptionData) -> dict[str, float]:
        """Greedy BLEU-4 on the held-out images: the time-to-quality metric."""
        vocab = data.vocab
        start, end = vocab.index[START], vocab.index[END]
        ids = []
        for i in range(0, len(data.test_inputs), 256):
            ids += greedy(model, data.test_inputs[i : i + 256], start, end, data.max_words)[0]
        hyps = [vocab.decode(t) for t in ids]
        return {"bleu4_greedy": bleu_scores(hyps, data.test.captions)["bleu4"]}

    def extra_state(self, data: CaptionData) -> dict:
        return {"vocab": data.vocab.words, "encoder": data.encoder}

    def pretrained(self, data: CaptionData) -> bool | None:
        return None if data.encoder is None else data.encoder["pretrained"]

    def finish(self, model, data: CaptionData, run_dir: Path, history: list) -> dict:
        metrics = caption_report(model, data, data.max_words, data.beam, data.skipped)
        if data.encoder is not None:
            metrics["encoder"] = data.encoder
        return metrics


def bleu_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (0..1) against all references of each image (sacrebleu)."""
    from sacrebleu.metrics import BLEU

    streams = max(len(r) for r in references)
    # sacrebleu wants equally many reference streams: repeating a reference changes no score
    padded = [
        [refs[j] if j < len(refs) else refs[0] for refs in references] for j in range(streams)
    ]
    return {
        f"bleu{n}": BLEU(max_ngram_order=n).corpus_score(hypotheses, padded).score / 100
        for n in (1, 2, 3, 4)
    }


def decode_all(model, data: CaptionData, max_words: int, beam: int) -> tuple[list[str], list[str]]:
    vocab = data.vocab
    start, end = vocab.index[START], vocab.index[END]
    model.eval()
    greedy_ids = []
    inputs = data.test_inputs
    for i in range(0, len(inputs), 256):
        greedy_ids += greedy(model, inputs[i : i + 256], start, end, max_words)[0]
    beam_ids = [
        beam_search(model, inputs[i : i + 1], start, end, max_words, beam)[0]
        for i in range(len(inputs))
    ]
    return [vocab.decode(g) for g in greedy_ids], [vocab.decode(b) for b in beam_ids]


def caption_report(model, data: CaptionData, max_words: int, beam: int, skipped: int) -> dict:
    greedy_caps, beam_caps = decode_all(model, data, max_words, beam)
    refs = data.test.captions
    metrics = {
        **{f"{k}_greedy": v for k, v in bleu_scores(greedy_caps, refs).items()},
        **{f"{k}_beam": v for k, v in bleu_scores(beam_caps, refs).items()},
        "beam": beam,
        "test_images": len(refs),
        "skipped_bad_images": skipped,
    }
    if data.test.scenes is not None:
        right = [names_every_object(c, s) for c, s in zip(beam_caps, data.test.scenes)]
        metrics["objects_named_correctly"] = sum(right) / len(right)
    metrics["examples"] = [
        {
            "image": data.test.names[i],
            "references": refs[i],
            "greedy": greedy_caps[i],
            "beam": beam_caps[i],
        }
        for i in range(min(5, len(refs)))
    ]
    return metrics


# -- gpulab predict caption ----------------------------------------------------------------------


def load_captioner(
    run_dir: Path,
) -> tuple[Captioner, Vocabulary, "config.CaptionConfig", Backbone | None]:
    """The trained captioner, its vocabulary and config, and its frozen backbone if it has one."""
    ck, cfg = load_trained(run_dir, WORKLOAD)
    vocab = Vocabulary(list(ck["extra"]["vocab"]))
    backbone = None
    if cfg.encoder != "small":
        weights = Path(cfg.encoder_weights) if cfg.encoder_weights else None
        backbone, pretrained, source = load_backbone(cfg.encoder, weights, cfg.seed)
        trained = (ck["extra"].get("encoder") or {}).get("pretrained")
        if trained and not pretrained:
            raise GpulabError(
                f"{run_dir} was trained on {cfg.encoder} ImageNet features, but {source} is "
                f"used here; put the weights file at {cached_weights_path(BACKBONES[cfg.encoder][1])}"
            )
    dim = None if backbone is None else backbone.dim
    model = Captioner(len(vocab), cfg.embed, cfg.hidden, cfg.width, dim)
    load_weights(model, ck["model"], run_dir)
    return model.eval(), vocab, cfg, backbone


def caption_images(
    paths: list[Path], run_dir: Path, beam: int = 3, device: str = "auto"
) -> list[dict]:
    """Beam-search captions with their log-probabilities for each image."""
    if beam < 1:
        raise GpulabError("--beam must be at least 1")
    model, vocab, cfg, backbone = load_captioner(run_dir)
    images = [open_image(p) for p in paths]  # every file checked before any work
    dev = resolve_device(device)
    model.to(dev)
    if backbone is not None:
        backbone.to(dev)
    out = []
    for path, img in zip(paths, images):
        inputs = image_tensor(img, cfg.image_size).unsqueeze(0).to(dev)
        if backbone is not None:
            inputs = backbone(inputs)
        ids, logp = beam_search(
            model, inputs, vocab.index[START], vocab.index[END], cfg.max_words, beam
        )
        out.append({"image": str(path), "caption": vocab.decode(ids), "logprob": logp})
    return out


WORKLOAD = CaptionWorkload()
