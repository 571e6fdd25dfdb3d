"""The `cnn` workload: VGG16 / AlexNet / ResNet training throughput with MFU, tf_cnn_benchmarks
style, and a real training with held-out top-1 on a folder of images."""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gpulab.runtime.errors import GpulabError
from gpulab.workloads.base import TrainConfig, Workload, require
from gpulab.workloads.cnn.data import CnnData, build_cnn_data

MODELS = ("vgg16", "alexnet", "resnet50", "resnet18")


@dataclass
class CnnConfig(TrainConfig):
    epochs: int = 1
    batch_size: int = 64  # global
    lr: float = 0.01  # SGD with momentum 0.9, weight decay 1e-4 (5e-4 for VGG16 / AlexNet)
    seed: int = 0
    eval_every: int = 0
    warmup_steps: int = 10  # excluded from images/s and the step-time statistics
    model: str = "resnet50"
    data: str = "synthetic"  # or a folder of class sub-folders of images
    image_size: int = 224
    steps: int | None = None  # steps in each epoch (synthetic: None is 100; a folder: at most)
    classes: int = 1000  # synthetic data: classes of the random labels
    channels_last: bool | None = None  # None: on for CUDA (tensor cores prefer NHWC)
    auto_batch: bool = False  # find the largest batch that fits (--batch auto)
    workers: int | None = None  # DataLoader processes for a folder (None: up to 8, one per core)
    test_fraction: float = 0.1  # a folder: held out per class for top-1
    decode: str = "auto"  # packed shards: cpu (workers) or gpu (nvJPEG); auto: gpu on CUDA
    shuffle_buffer: int = 4096  # packed shards: how far a sample may move from its file order
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
        require(self.steps is None or self.steps >= 1, "steps must be at least 1")
        require(self.classes >= 2, "classes must be at least 2")
        require(self.workers is None or self.workers >= 0, "workers must be 0 or more")
        require(0 < self.test_fraction < 1, "test_fraction must lie strictly between 0 and 1")
        require(self.decode in ("auto", "cpu", "gpu"), "decode must be auto, cpu or gpu")
        require(self.shuffle_buffer >= 0, "shuffle_buffer must be 0 or more")


def build_cnn(name: str, classes: int) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, num_classes=classes)


def channels_last_for(cfg: CnnConfig, device: torch.device) -> bool:
    return device.type == "cuda" if cfg.channels_last is None else cfg.channels_last


class CnnWorkload(Workload):
    name = "cnn"
    summary = "VGG16 / AlexNet / ResNet-50 / ResNet-18 training images/s and MFU"
    config_cls = CnnConfig
    key_metric = "samples_per_s"
    higher_is_better = True
    graph_safe = True

    def presets(self):
        default = CnnConfig()
        return {
            "default": default,
            "debug": replace(
                default,
                model="resnet18",
                image_size=64,
                batch_size=8,
                steps=6,
                warmup_steps=2,
                classes=10,
            ),
        }

    def default_precision(self, device: torch.device) -> str:
        """bf16 autocast on GPUs that have it: the tensor-core path every CNN benchmark uses."""
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if bf16 else "fp32"

    def build_data(self, cfg, device, dist) -> CnnData:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        return build_cnn_data(cfg, device, dist, channels_last_for(cfg, device))

    def build_model(self, cfg, data: CnnData) -> nn.Module:
        model = build_cnn(cfg.model, data.classes)
        if data.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_optimizer(self, cfg, model, capturable):
        decay = 5e-4 if cfg.model in ("vgg16", "alexnet") else 1e-4
        fused = next(model.parameters()).is_cuda
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=decay, fused=fused or None
        )

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x).float(), y)

    def evaluate(self, model, data: CnnData):
        if data.eval_batch is None:
            return {}
        x, y = data.eval_batch
        logits = model(x).float()
        return {
            "heldout_loss": F.cross_entropy(logits, y),
            "heldout_top1_batch": (logits.argmax(1) == y).float().mean(),
        }

    def flops(self, cfg, model, data: CnnData):
        from gpulab.runtime.flops import count_flops

        x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
        return count_flops(model, (x, torch.zeros(1, dtype=torch.long)), self.loss)

    def finish(self, model, data: CnnData, run_dir: Path, history: list) -> dict:
        metrics = {"source": data.source}
        if data.test is not None:
            metrics.update(heldout_top1(model, data))
        if hasattr(data.train, "skipped"):
            metrics["skipped_bad_images"] = data.train.skipped
        return metrics


@torch.no_grad()
def heldout_top1(model: nn.Module, data: CnnData) -> dict:
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for x, y in data.test:
        x = x.to(device)
        if data.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        right += int((model(x).argmax(1).cpu() == y).sum())
        total += len(y)
    if total == 0:
        raise GpulabError("the held-out split is empty; give each class more images")
    return {"test_top1": right / total, "test_images": total, "classes": data.classes}


WORKLOAD = CnnWorkload()
