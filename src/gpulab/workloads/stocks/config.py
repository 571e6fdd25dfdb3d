"""Seed settings of the study's stock network, and a tiny `debug` preset derived from them."""

from dataclasses import dataclass, replace

from gpulab.workloads.base import TrainConfig, require


@dataclass
class StocksConfig(TrainConfig):
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0
    eval_every: int = 50  # train/test MSE points on the curves [steps]
    warmup_steps: int = 10
    data: str | None = None  # a data_stocks.csv-style file; None: the generated market
    rows: int = 41_266  # generated market length, as in the study's data set [minutes]
    stocks: int = 500  # constituent columns of the generated market
    train_fraction: float = 0.8  # chronological split: this first share of minutes trains
    hidden: tuple[int, ...] = (1024, 512, 256, 128)  # widths of the MLP's hidden layers

    def validate(self) -> None:
        super().validate()
        require(
            self.rows >= 2 and self.stocks >= 1, "rows must be at least 2 and stocks at least 1"
        )
        require(0 < self.train_fraction < 1, "train_fraction must lie strictly between 0 and 1")
        require(
            len(self.hidden) >= 1 and min(self.hidden) >= 1, "hidden needs widths of at least 1"
        )


def default() -> StocksConfig:
    return StocksConfig()


def debug() -> StocksConfig:
    """Seconds on a laptop CPU: a small market and a small network."""
    return replace(
        default(),
        rows=2_000,
        stocks=16,
        epochs=2,
        batch_size=64,
        eval_every=5,
        warmup_steps=2,
        hidden=(64, 32, 16, 8),
    )
