"""The `cnn` workload: VGG16 / AlexNet / ResNet training throughput with MFU, tf_cnn_benchmarks
style, and a real training with held-out top-1 on a folder of images."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gpulab.runtime.errors import GpulabError
from gpulab.runtime.precision import bf16_where_supported
from gpulab.workloads.base import Workload
from gpulab.workloads.cnn import config
from gpulab.workloads.cnn.data import CnnData, build_cnn_data
from gpulab.workloads.cnn.model import build_cnn, channels_last_for


class CnnWorkload(Workload):
    name = "cnn"
    summary = "VGG16 / AlexNet / ResNet-50 / ResNet-18 training images/s and MFU"
    config_cls = config.CnnConfig
    key_metric = "samples_per_s"
    higher_is_better = True
    graph_safe = True
    # On an H100 the compiled step ran 1.2-1.4x the eager one (benchmarks/NOTES-cnn_speed.md)
    compile_on_gpu = True

    def presets(self):
        return {"default": config.default(), "debug": config.debug()}

    def default_precision(self, device: torch.device) -> str:
        """bf16 autocast on GPUs that have it: the tensor-core path every CNN benchmark uses."""
        return bf16_where_supported(device)

    def build_data(self, cfg, device, dist) -> CnnData:
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

    def loss(self, model, batch, data=None):
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
        return count_flops(
            model, (x, torch.zeros(1, dtype=torch.long)), lambda m, b: self.loss(m, b)
        )

    def finish(self, model, data: CnnData, run_dir: Path, history: list) -> dict:
        metrics = {"source": data.source}
        if data.test is not None:
            metrics.update(heldout_top1(model, data))
        if hasattr(data.train, "skipped"):  # each failed read: a bad image once an epoch
            metrics["skipped_bad_images"] = data.train.skipped
            metrics["skipped_bad_test_images"] = getattr(data.test, "skipped", 0)
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
