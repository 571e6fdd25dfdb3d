"""Feed-forward style training: seed settings and a tiny `debug` preset derived from them."""

from dataclasses import dataclass, replace

from gpulab.workloads.base import TrainConfig, require


@dataclass
class StyleConfig(TrainConfig):
    epochs: int = 2
    batch_size: int = 4
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0
    eval_every: int = 100
    warmup_steps: int = 5
    style: str | None = None  # style image; None: gpulab's generated painting
    images: str | None = None  # folder of content images; None: crops of the bundled photos
    vgg_weights: str | None = None  # VGG19 state dict; None: torchvision's cache, else random
    count: int = 256  # bundled crops when `images` is None [images]
    workers: int | None = None  # DataLoader processes for `images` (None: loader_workers)
    size: int = 256  # side of the training crops [pixels]
    content_weight: float = 1.0  # slider 0..2 (same scale as `gpulab stylize`)
    style_weight: float = 5.0  # slider 0..10
    tv_weight: float = 1e-3  # total-variation weight: smoothness of the output
    width: int = 32  # channels of the network's first layer
    residual_blocks: int = 5  # residual blocks between down- and upsampling

    def validate(self) -> None:
        super().validate()
        require(0 <= self.content_weight <= 2, "content_weight must lie in 0..2")
        require(0 <= self.style_weight <= 10, "style_weight must lie in 0..10")
        require(
            self.content_weight > 0 or self.style_weight > 0,
            "content and style weights are both 0: nothing to learn",
        )
        require(
            64 <= self.size <= 1024 and self.size % 4 == 0,
            "size must be a multiple of 4 in 64..1024",
        )
        require(
            self.count >= 1 and self.width >= 1 and self.residual_blocks >= 0,
            "count and width must be at least 1, residual_blocks 0 or more",
        )
        require(self.workers is None or self.workers >= 0, "workers must be 0 or more")


def default() -> StyleConfig:
    return StyleConfig()


def debug() -> StyleConfig:
    """Seconds on a laptop CPU: small crops, a narrow network, a few steps."""
    return replace(
        default(),
        epochs=1,
        batch_size=2,
        count=8,
        size=64,
        width=8,
        residual_blocks=1,
        eval_every=2,
        warmup_steps=1,
    )
