"""Captioning: seed settings (Show and Tell sizes from the study) and a tiny `debug` preset."""

from dataclasses import dataclass, replace

from gpulab.workloads.base import TrainConfig, require


@dataclass
class CaptionConfig(TrainConfig):
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3  # Adam learning rate
    seed: int = 0
    eval_every: int = 100
    warmup_steps: int = 5
    data: str | None = None  # COCO-style captions JSON or image,caption CSV; None: generated scenes
    images: str | None = None  # the folder its file names are in
    skip_bad: bool = False  # train without unreadable images instead of stopping
    count: int = 2000  # generated scenes when `data` is None
    image_size: int = 64  # side of the encoder's input [pixels]
    encoder: str = "small"  # small (trained here) or a frozen backbone: vgg16, resnet18, resnet50
    encoder_weights: str | None = None  # backbone ImageNet state dict; None: torch's cache
    embed: int = 256  # word embedding width
    hidden: int = 256  # LSTM hidden width
    width: int = 32  # small encoder: channels in its first stage
    max_words: int = 15  # longest caption generated [words]
    min_word_count: int = 1  # rarer words become <unk> [occurrences]
    test_fraction: float = 0.1  # share of images held out for BLEU
    beam: int = 3  # beam width of the evaluation's search; 1: greedy

    def validate(self) -> None:
        super().validate()
        require(
            self.count >= 2 and self.image_size >= 16,
            "count must be at least 2, image_size at least 16",
        )
        require(
            min(self.embed, self.hidden, self.width, self.max_words, self.min_word_count) >= 1,
            "embed, hidden, width, max_words and min_word_count must be at least 1",
        )
        require(0 < self.test_fraction < 1, "test_fraction must lie strictly between 0 and 1")
        require(self.beam >= 1, "beam must be at least 1")
        from gpulab.workloads.caption.model import ENCODERS

        require(self.encoder in ENCODERS, f"encoder must be one of {', '.join(ENCODERS)}")


def default() -> CaptionConfig:
    return CaptionConfig()


def debug() -> CaptionConfig:
    return replace(
        default(),
        count=48,
        epochs=2,
        batch_size=16,
        image_size=32,
        embed=32,
        hidden=32,
        width=8,
        eval_every=5,
        warmup_steps=1,
    )
