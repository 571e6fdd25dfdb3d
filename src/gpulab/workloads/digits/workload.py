"""The `digits` workload: the classic tutorial CNN, test accuracy, time to a target accuracy."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gpulab.runtime.plots import save_figure
from gpulab.workloads.base import QualityTarget, Workload
from gpulab.workloads.digits import config
from gpulab.workloads.digits.data import DigitsData, build_digits_data
from gpulab.workloads.digits.model import DigitsCNN


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    return torch.cat([model(x[i : i + chunk]).argmax(dim=1) for i in range(0, len(x), chunk)])


def confusion(pred: torch.Tensor, truth: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(true class, predicted class) counts."""
    return torch.bincount(truth * classes + pred, minlength=classes * classes).view(
        classes, classes
    )


class DigitsWorkload(Workload):
    name = "digits"
    summary = "the MNIST demo: 2-conv CNN on handwritten digits (bundled 8x8 digits or MNIST)"
    config_cls = config.DigitsConfig
    key_metric = "test_accuracy"
    higher_is_better = True
    graph_safe = True

    def presets(self):
        return {"default": config.default(), "debug": config.debug()}

    def quality_target(self, cfg: config.DigitsConfig) -> QualityTarget:
        target = cfg.target_accuracy or (0.99 if cfg.data else 0.97)
        return QualityTarget("test_accuracy", target, higher_is_better=True)

    def build_data(self, cfg, device, dist) -> DigitsData:
        return build_digits_data(cfg, device, dist)

    def build_model(self, cfg, data) -> nn.Module:
        return DigitsCNN()

    def build_optimizer(self, cfg, model, capturable):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, capturable=capturable, fused=True)

    def loss(self, model, batch, data=None):
        x, y = batch
        return F.cross_entropy(model(x).float(), y)

    def evaluate(self, model, data: DigitsData):
        correct = (predict(model, data.x_test) == data.y_test).float().mean()
        return {"test_accuracy": correct}

    def flops(self, cfg, model, data: DigitsData):
        from gpulab.runtime.flops import count_flops

        return count_flops(model, (data.x_test[:1], data.y_test[:1]), lambda m, b: self.loss(m, b))

    def finish(self, model, data: DigitsData, run_dir: Path, history: list) -> dict:
        model.eval()
        pred = predict(model, data.x_test)
        counts = confusion(pred, data.y_test).cpu()
        plot_confusion(run_dir / "confusion.png", counts, data.source)
        return {
            "test_accuracy": float((pred == data.y_test).float().mean()),
            "test_images": len(data.y_test),
            "confusion": counts.tolist(),
            "source": data.source,
        }


def plot_confusion(path: Path, counts: torch.Tensor, source: str) -> None:
    accuracy = counts.diag().sum().item() / max(counts.sum().item(), 1)
    with save_figure(path, figsize=(5.5, 5)) as fig:
        ax = fig.add_subplot()
        ax.imshow(counts.numpy(), cmap="Blues")
        top = counts.max().item() or 1
        for t in range(10):
            for p in range(10):
                n = counts[t, p].item()
                if n:
                    ax.text(
                        p,
                        t,
                        str(n),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if n > top / 2 else "black",
                    )
        ax.set(
            xlabel="predicted digit",
            ylabel="true digit",
            xticks=range(10),
            yticks=range(10),
            title=f"{source}: test accuracy {accuracy:.2%}",
        )


WORKLOAD = DigitsWorkload()
