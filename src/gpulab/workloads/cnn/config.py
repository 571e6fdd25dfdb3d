"""Settings of the `cnn` workload: tf_cnn_benchmarks-style defaults and a tiny `debug` preset."""

from dataclasses import dataclass, replace

from gpulab.workloads.base import TrainConfig, require

MODELS = ("vgg16", "alexnet", "resnet50", "resnet18")


@dataclass
class CnnConfig(TrainConfig):
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.01  # SGD, momentum 0.9, weight decay 1e-4 (5e-4 for VGG16 / AlexNet)
    seed: int = 0
    eval_every: int = 0
    warmup_steps: int = 10  # left out of images/s and the step-time statistics [steps]
    model: str = "resnet50"  # vgg16, alexnet, resnet50 or resnet18
    data: str = "synthetic"  # synthetic, an ImageFolder (class sub-folders) or packed shards
    image_size: int = 224  # side of the input images [pixels]
    steps_per_epoch: int | None = None  # synthetic: None is 100; a folder: at most this [steps]
    classes: int = 1000  # synthetic data: classes of the random labels
    channels_last: bool | None = None  # NHWC layout; None: on for CUDA (tensor cores prefer it)
    auto_batch: bool = False  # CUDA: find the largest batch that fits in memory
    workers: int | None = None  # DataLoader processes for a folder (None: loader_workers)
    test_fraction: float = 0.1  # a folder: share held out per class for top-1
    decode: str = "auto"  # packed shards: cpu (workers) or gpu (nvJPEG); auto: cpu
    shuffle_buffer: int = 4096  # packed shards: how far a sample may move in order [samples]
    skip_bad: bool = False  # packed shards: train on, counting images that fail to decode

    def validate(self) -> None:
        super().validate()
        require(
            self.model in MODELS,
            f"unknown model {self.model!r}; known models: {', '.join(MODELS)}",
        )
        minimum = 64 if self.model == "alexnet" else 32
        require(
            self.image_size >= minimum, f"image_size must be at least {minimum} for {self.model}"
        )
        require(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            "steps_per_epoch must be at least 1",
        )
        require(self.classes >= 2, "classes must be at least 2")
        require(self.workers is None or self.workers >= 0, "workers must be 0 or more")
        require(0 < self.test_fraction < 1, "test_fraction must lie strictly between 0 and 1")
        require(self.decode in ("auto", "cpu", "gpu"), "decode must be auto, cpu or gpu")
        require(self.shuffle_buffer >= 0, "shuffle_buffer must be 0 or more")


def default() -> CnnConfig:
    return CnnConfig()


def debug() -> CnnConfig:
    """Seconds on a CPU: ResNet-18 at 64 px, a few steps of 8 images."""
    return replace(
        default(),
        model="resnet18",
        image_size=64,
        batch_size=8,
        steps_per_epoch=6,
        warmup_steps=2,
        classes=10,
    )
