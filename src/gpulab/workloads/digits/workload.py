"""The `digits` workload: the classic tutorial CNN, test accuracy, time to a target accuracy."""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gpulab.runtime.plots import save_figure
from gpulab.workloads.base import QualityTarget, TrainConfig, Workload, require
from gpulab.workloads.digits.data import DigitsData, build_digits_data


@dataclass
class DigitsConfig(TrainConfig):
    epochs: int = 20
    batch_size: int = 50  # the tutorial's
    lr: float = 1e-3  # Adam
    seed: int = 0
    eval_every: int = 20  # test accuracy points, for the time to the target
    warmup_steps: int = 5
    data: str | None = None  # a folder of MNIST IDX files; None: scikit-learn's bundled digits
    test_fraction: float = 0.2  # bundled digits only; MNIST has its own test files
    target_accuracy: float | None = None  # None: 0.97 on the bundled digits, 0.99 on MNIST

    def validate(self) -> None:
        super().validate()
        require(0 < self.test_fraction < 1, "test_fraction must lie strictly between 0 and 1")
        require(
            self.target_accuracy is None or 0 < self.target_accuracy <= 1,
            "target_accuracy must lie in (0, 1]",
        )


class DigitsCNN(nn.Module):
    """Two 5x5 conv layers (32, 64) with 2x2 max-pooling, a 1024-unit layer, dropout 0.5."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classify = nn.Sequential(
            nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(dropout), nn.Linear(1024, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


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
    config_cls = DigitsConfig
    key_metric = "test_accuracy"
    higher_is_better = True
    graph_safe = True

    def presets(self):
        default = DigitsConfig()
        return {"default": default, "debug": replace(default, epochs=3, eval_every=10)}

    def quality_target(self, cfg: DigitsConfig) -> QualityTarget:
        target = cfg.target_accuracy or (0.99 if cfg.data else 0.97)
        return QualityTarget("test_accuracy", target, higher_is_better=True)

    def build_data(self, cfg, device, dist) -> DigitsData:
        return build_digits_data(cfg, device, dist)

    def build_model(self, cfg, data) -> nn.Module:
        return DigitsCNN()

    def build_optimizer(self, cfg, model, capturable):
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, capturable=capturable, fused=True)

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x).float(), y)

    def evaluate(self, model, data: DigitsData):
        correct = (predict(model, data.x_test) == data.y_test).float().mean()
        return {"test_accuracy": correct}

    def flops(self, cfg, model, data: DigitsData):
        from gpulab.runtime.flops import count_flops

        return count_flops(model, (data.x_test[:1], data.y_test[:1]), self.loss)

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
