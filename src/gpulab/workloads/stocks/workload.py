"""The `stocks` workload spec, its final report and `gpulab predict stocks`."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gpulab.runtime.checkpoint import load_weights
from gpulab.runtime.device import resolve_device
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.files import atomic_write
from gpulab.runtime.plots import save_figure
from gpulab.workloads.base import Workload, load_trained
from gpulab.workloads.stocks import config
from gpulab.workloads.stocks.data import StocksData, build_stocks_data, read_stocks_csv
from gpulab.workloads.stocks.model import StockMLP


class StocksWorkload(Workload):
    name = "stocks"
    summary = "S&P 500 one minute ahead from its constituents: 1024-512-256-128-1 MLP"
    config_cls = config.StocksConfig
    can_predict = True
    key_metric = "test_mse"
    higher_is_better = False
    graph_safe = True
    # On a 16-vCPU H100 host one epoch on the CPU ran at 9,927 samples/s with 1 thread, 31,747
    # with 4 and 2,636 with 16 (2026-11-23): the 256-row steps are too short to share out widely
    max_cpu_threads = 4

    def presets(self):
        return {"default": config.default(), "debug": config.debug()}

    def build_data(self, cfg, device, dist) -> StocksData:
        return build_stocks_data(cfg, device, dist)

    def build_model(self, cfg, data: StocksData) -> nn.Module:
        return StockMLP(len(data.split.columns), tuple(cfg.hidden))

    def build_optimizer(self, cfg, model, capturable):
        # fused: one multi-tensor kernel per step on the GPU (and fewer passes on the CPU)
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, capturable=capturable, fused=True)

    def loss(self, model, batch, data=None):
        x, y = batch
        return F.mse_loss(model(x).float(), y)

    def evaluate(self, model, data: StocksData):
        return {"test_mse": F.mse_loss(model(data.x_test).float(), data.y_test)}

    def verdict(self, metrics: dict) -> str:
        net, base = metrics["test_mse_points"], metrics["persistence_mse_points"]
        if metrics["beats_persistence"]:
            return f"the network beats persistence: test MSE {net:.4g} vs {base:.4g} index points^2"
        return (
            f"the network does NOT beat persistence (next minute = this minute): test MSE "
            f"{net:.4g} vs {base:.4g} index points^2"
        )

    def extra_state(self, data: StocksData) -> dict:
        s = data.split.scaler
        return {
            "columns": data.split.columns,
            "scaler_min": s.min_.tolist(),
            "scaler_scale": s.scale_.tolist(),
            "train_rows": data.split.train_rows,
            "source": data.source,
        }

    def finish(self, model, data: StocksData, run_dir: Path, history: list) -> dict:
        split = data.split
        predicted = predict_scaled(model, data.x_test)
        metrics = test_metrics(split, predicted)
        _plot_predictions(run_dir / "predictions.png", split, predicted)
        _plot_curves(run_dir / "loss.png", history)
        return metrics


@torch.no_grad()
def predict_scaled(model: nn.Module, x: torch.Tensor, batch: int = 65_536) -> np.ndarray:
    """Full-precision predictions in scaled units, in chunks that fit any device."""
    model.eval()
    out = [model(x[i : i + batch]).float().cpu() for i in range(0, len(x), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def _errors(prefix: str, predicted_scaled, actual_scaled, predicted_pts, actual_pts) -> dict:
    return {
        f"{prefix}mse": float(np.mean((predicted_scaled - actual_scaled) ** 2)),
        f"{prefix}mse_points": float(np.mean((predicted_pts - actual_pts) ** 2)),
        f"{prefix}rmse_points": float(np.sqrt(np.mean((predicted_pts - actual_pts) ** 2))),
        f"{prefix}mape_pct": float(
            100 * np.mean(np.abs((predicted_pts - actual_pts) / actual_pts))
        ),
    }


def test_metrics(split, predicted_scaled: np.ndarray) -> dict:
    """The network's test errors next to the persistence and training-mean baselines."""
    start = split.train_rows
    actual_scaled, actual_pts = split.y_test, split.sp500[start:]
    # Persistence: the next value is the current one, i.e. the previous row's SP500.
    persist_scaled = split.scaled[start - 1 : -1, 0]
    persist_pts = split.sp500[start - 1 : -1]
    mean_scaled = np.full_like(actual_scaled, split.y_train.mean())
    mean_pts = np.full_like(actual_pts, split.sp500[:start].mean())
    metrics = {
        **_errors(
            "test_", predicted_scaled, actual_scaled, split.to_points(predicted_scaled), actual_pts
        ),
        **_errors("persistence_", persist_scaled, actual_scaled, persist_pts, actual_pts),
        **_errors("train_mean_", mean_scaled, actual_scaled, mean_pts, actual_pts),
        "test_rows": len(actual_pts),
        "train_rows": int(start),
    }
    metrics["beats_persistence"] = metrics["test_mse_points"] < metrics["persistence_mse_points"]
    return metrics


def _plot_predictions(path: Path, split, predicted_scaled: np.ndarray) -> None:
    start = split.train_rows
    minutes = np.arange(len(split.sp500) - start)  # trading minutes: no overnight gaps drawn
    first, last = (pd.to_datetime(split.dates[i], unit="s") for i in (start, -1))
    with save_figure(path, figsize=(10, 4)) as fig:
        ax = fig.subplots()
        ax.plot(minutes, split.sp500[start:], lw=1.0, label="actual SP500 (next minute)")
        ax.plot(minutes, split.to_points(predicted_scaled), lw=1.0, label="network", alpha=0.8)
        ax.set_title(f"Test period {first:%Y-%m-%d} to {last:%Y-%m-%d}: predicted vs actual")
        ax.set_xlabel("trading minute of the test period")
        ax.set_ylabel("index points")
        ax.legend()


def _plot_curves(path: Path, history: list) -> None:
    with save_figure(path, figsize=(7, 4)) as fig:
        ax = fig.subplots()
        for key, label in (("train_loss", "train MSE (batch mean)"), ("test_mse", "test MSE")):
            points = [(h["step"], h[key]) for h in history if key in h]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("MSE (scaled units)")
        ax.set_title("Training curves")
        ax.legend()


# -- gpulab predict stocks -----------------------------------------------------------------------


def predict_stocks(run_dir: Path, data: Path, out: Path, device: str = "auto") -> pd.DataFrame:
    """Predictions of a trained run for a stocks CSV, written atomically as DATE,actual,predicted."""
    ck, cfg = load_trained(run_dir, WORKLOAD)
    extra = ck["extra"]
    frame = read_stocks_csv(data)
    columns = extra["columns"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise GpulabError(
            f"{data}: lacks {len(missing)} constituent columns the model was trained on "
            f"(first: {missing[0]}); give a CSV with the training file's columns"
        )
    lo, scale = np.asarray(extra["scaler_min"]), np.asarray(extra["scaler_scale"])
    x = frame[columns].to_numpy(dtype=np.float64) * scale[1:] + lo[1:]
    dev = resolve_device(device)
    model = StockMLP(len(columns), tuple(cfg.hidden))
    load_weights(model, ck["model"], run_dir)
    model.to(dev)
    predicted = (
        predict_scaled(model, torch.from_numpy(x.astype(np.float32)).to(dev)) - lo[0]
    ) / scale[0]
    result = pd.DataFrame({"DATE": frame["DATE"], "actual": frame["SP500"], "predicted": predicted})
    atomic_write(Path(out), lambda f: result.to_csv(f, index=False, float_format="%.4f"))
    return result


WORKLOAD = StocksWorkload()
