"""Stock data: the `data_stocks.csv` schema, a generated market with that schema, and the split.

Schema: `DATE` (unix seconds, one row per minute), `SP500` (the index one minute *after* DATE:
the target is already shifted), then one column per constituent (`NASDAQ.AAL`, `NYSE.MMM`, ...).
"""

import csv
import string
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import MinMaxScaler

from gpulab.data import TensorBatches
from gpulab.runtime.distributed import DistInfo
from gpulab.runtime.errors import GpulabError, first_line
from gpulab.runtime.files import atomic_write

MINUTES_PER_DAY = 390  # 09:30 to 16:00 New York time
SESSION_OPEN_UTC = (13, 30)  # 09:30 EDT
FIRST_DAY = datetime(2017, 4, 3, tzinfo=timezone.utc)  # the study's data set starts here
INDEX_LEVEL = 2_400.0


# -- the generated market ------------------------------------------------------------------------


def trading_minutes(rows: int) -> np.ndarray:
    """Unix seconds of `rows` consecutive trading minutes, weekdays 09:30-16:00 EDT."""
    days, day = [], pd.Timestamp(FIRST_DAY)
    while len(days) * MINUTES_PER_DAY < rows:
        if day.weekday() < 5:
            days.append(day + pd.Timedelta(hours=SESSION_OPEN_UTC[0], minutes=SESSION_OPEN_UTC[1]))
        day += pd.Timedelta(days=1)
    opens = np.array([int(d.timestamp()) for d in days], dtype=np.int64)
    minutes = opens[:, None] + 60 * np.arange(MINUTES_PER_DAY, dtype=np.int64)[None, :]
    return minutes.reshape(-1)[:rows]


def ticker_names(count: int, rng: np.random.Generator) -> list[str]:
    """Unique exchange-qualified tickers, NASDAQ first then NYSE, as in the study's file."""
    names: set[str] = set()
    letters = np.array(list(string.ascii_uppercase))
    while len(names) < count:
        symbol = "".join(rng.choice(letters, size=int(rng.integers(1, 5))))
        exchange = "NASDAQ" if rng.random() < 0.3 else "NYSE"
        if f"NASDAQ.{symbol}" not in names and f"NYSE.{symbol}" not in names:
            names.add(f"{exchange}.{symbol}")
    return sorted(names, key=lambda n: (not n.startswith("NASDAQ."), n))


def generate_stocks(rows: int = 41_266, stocks: int = 500, seed: int = 0) -> pd.DataFrame:
    """A deterministic minute-level market in the `data_stocks.csv` schema.

    Log prices follow a shared market factor (random walk with overnight gaps), sector factors
    that revert to their mean (the part a network can learn from price levels), and
    idiosyncratic random walks; the index is a fixed weighted sum of the constituents, taken
    one minute ahead.
    """
    if rows < 2 or stocks < 1:
        raise GpulabError(
            "the generated market needs --rows of at least 2 and --stocks of at least 1"
        )
    rng = np.random.default_rng(seed)
    n = rows + 1  # one more minute: SP500 is the index one minute ahead
    sectors = 11
    sector_of = rng.integers(0, sectors, size=stocks)
    beta = rng.uniform(0.6, 1.5, size=stocks)
    gamma = rng.uniform(0.5, 1.5, size=stocks)
    idio_vol = rng.uniform(2e-4, 8e-4, size=stocks)

    market_ret = rng.normal(2e-6, 4e-4, size=n)
    market_ret[::MINUTES_PER_DAY] += rng.normal(0.0, 4e-3, size=len(market_ret[::MINUTES_PER_DAY]))
    market = np.cumsum(market_ret)
    shocks = rng.normal(0.0, 5e-4, size=(n, sectors))
    sector = np.empty_like(shocks)
    sector[0] = shocks[0]
    for t in range(1, n):  # Ornstein-Uhlenbeck: half-life of about 140 minutes
        sector[t] = 0.995 * sector[t - 1] + shocks[t]
    idio = np.cumsum(rng.normal(0.0, 1.0, size=(n, stocks)) * idio_vol, axis=0)

    log_price = (
        np.log(rng.uniform(10.0, 400.0, size=stocks))[None, :]
        + beta[None, :] * market[:, None]
        + gamma[None, :] * sector[:, sector_of]
        + idio
    )
    prices = np.round(np.exp(log_price), 4)
    weights = rng.pareto(1.5, size=stocks) + 0.05  # a few heavy constituents, many light ones
    weights *= INDEX_LEVEL / float(weights @ prices[0])
    index = np.round(prices @ weights, 4)

    frame = pd.DataFrame(prices[:-1], columns=ticker_names(stocks, rng))
    frame.insert(0, "SP500", index[1:])
    frame.insert(0, "DATE", trading_minutes(rows))
    return frame


def write_stocks_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(Path(path), lambda f: frame.to_csv(f, index=False, float_format="%.4f"))


# -- a user's file -------------------------------------------------------------------------------


def _fail(path: Path, problem: str, fix: str) -> GpulabError:
    return GpulabError(f"{path}: {problem}; {fix}")


def read_stocks_csv(path: str | Path) -> pd.DataFrame:
    """Read and check a `data_stocks.csv`-style file; every problem is a one-line GpulabError."""
    path = Path(path)
    fix_schema = "the stocks CSV needs DATE, SP500 and one numeric column per constituent"
    if path.is_dir():
        raise GpulabError(
            f"{path} is a folder; pass --set data=FILE with the path of a stocks CSV file"
        )
    if not path.is_file():
        raise GpulabError(
            f"no such file: {path}; pass --set data=FILE with the path of a stocks CSV"
        )
    with open(path, "rb") as f:
        head = f.read(65536)
    if not head.strip():
        raise _fail(path, "the file is empty", fix_schema)
    if b"\0" in head:
        raise _fail(path, "this is a binary file, not a CSV", fix_schema)
    try:
        header = next(csv.reader([head.decode("utf-8").splitlines()[0]]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        raise _fail(path, "this is not a UTF-8 CSV file", fix_schema) from None
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise _fail(
            path,
            f"duplicate column names {', '.join(duplicates)}",
            "give every column its own name",
        )
    for required in ("DATE", "SP500"):
        if required not in header:
            raise _fail(path, f"no {required} column", fix_schema)
    if len(header) < 3:
        raise _fail(path, "no constituent columns besides DATE and SP500", fix_schema)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not a well-formed CSV ({first_line(e)})", fix_schema) from None
    if len(frame) == 0:
        raise _fail(path, "the header has no data rows under it", fix_schema)
    return _to_numbers(path, frame)


def _to_numbers(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell a finite number, or an error naming the first bad cell (file line numbers)."""
    numbers = frame.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().to_numpy() | ~np.isfinite(
        numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    )
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        text = frame.iat[row, col].strip()
        line = row + 2  # line 1 is the header
        name = frame.columns[col]
        if text == "" or text.lower() in ("nan", "na", "null", "none"):
            raise _fail(
                path,
                f"empty or NaN cell in column {name} at line {line}",
                "fill or drop rows with missing values",
            )
        raise _fail(
            path,
            f"column {name} at line {line} holds {text!r}, not a number",
            "fix or drop that row",
        )
    numbers["DATE"] = numbers["DATE"].astype(np.int64)
    return numbers


# -- split, scale, tensors -----------------------------------------------------------------------


@dataclass
class Split:
    """The chronological split, scaled by a MinMaxScaler(-1, 1) fit on the training rows only."""

    columns: list[str]  # constituents, in file order
    dates: np.ndarray  # DATE of every row
    sp500: np.ndarray  # SP500 of every row, index points
    scaled: np.ndarray  # (rows, 1 + constituents) float64: SP500 then constituents, scaled
    train_rows: int
    scaler: MinMaxScaler

    @property
    def x_train(self) -> np.ndarray:
        return self.scaled[: self.train_rows, 1:]

    @property
    def y_train(self) -> np.ndarray:
        return self.scaled[: self.train_rows, 0]

    @property
    def x_test(self) -> np.ndarray:
        return self.scaled[self.train_rows :, 1:]

    @property
    def y_test(self) -> np.ndarray:
        return self.scaled[self.train_rows :, 0]

    def to_points(self, y_scaled: np.ndarray) -> np.ndarray:
        """Scaled SP500 values back to index points."""
        return (np.asarray(y_scaled, dtype=np.float64) - self.scaler.min_[0]) / self.scaler.scale_[
            0
        ]


def split_and_scale(
    frame: pd.DataFrame, train_fraction: float, batch_size: int, source: str
) -> Split:
    """DATE dropped, first `train_fraction` of rows for training, scaler fit on those rows only."""
    if not 0.0 < train_fraction < 1.0:
        raise GpulabError(f"train_fraction {train_fraction} must lie strictly between 0 and 1")
    rows = len(frame)
    train_rows = int(rows * train_fraction)
    if train_rows < batch_size or rows - train_rows < 1:
        raise GpulabError(
            f"{source}: {rows} rows give {train_rows} training rows, fewer than one batch of "
            f"{batch_size}; give more rows or a smaller batch_size"
        )
    columns = [c for c in frame.columns if c not in ("DATE", "SP500")]
    values = frame[["SP500", *columns]].to_numpy(dtype=np.float64)
    scaler = MinMaxScaler(feature_range=(-1, 1)).fit(values[:train_rows])
    return Split(
        columns=columns,
        dates=frame["DATE"].to_numpy(),
        sp500=values[:, 0].copy(),
        scaled=scaler.transform(values),
        train_rows=train_rows,
        scaler=scaler,
    )


@dataclass
class StocksData:
    split: Split
    train: TensorBatches
    x_test: torch.Tensor  # on the training device
    y_test: torch.Tensor
    source: str


def load_frame(cfg) -> tuple[pd.DataFrame, str]:
    if cfg.data:
        return read_stocks_csv(cfg.data), str(cfg.data)
    return generate_stocks(
        cfg.rows, cfg.stocks, seed=cfg.seed
    ), f"generated({cfg.rows}x{cfg.stocks})"


def build_stocks_data(cfg, device: torch.device, dist: DistInfo) -> StocksData:
    """The whole scaled data set goes to the device once; batches are drawn there."""
    frame, source = load_frame(cfg)
    split = split_and_scale(frame, cfg.train_fraction, cfg.batch_size, source)

    def on_device(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    train = TensorBatches(
        (on_device(split.x_train), on_device(split.y_train)), cfg.batch_size, dist, cfg.seed
    )
    return StocksData(split, train, on_device(split.x_test), on_device(split.y_test), source)
