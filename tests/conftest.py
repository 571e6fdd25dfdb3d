"""Shared fixtures: CLI runner, temp runs root, tiny stock CSVs."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gpulab.runtime.distributed import torchrun_command
from gpulab.workloads.stocks.data import generate_stocks, write_stocks_csv


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Caches (e.g. backbone features) go to the test's own folder, never the user's."""
    monkeypatch.setenv("GPULAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests never download: gpulab runs offline in every test (tests/test_weights.py serves
    weights from 127.0.0.1 and turns it off itself)."""
    monkeypatch.setenv("GPULAB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_mlflow_from_the_environment(monkeypatch):
    """A user's MLFLOW_TRACKING_URI would send every test's run to their MLflow server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tb_scalars():
    """Every scalar in the event files of a folder, read by TensorBoard's own reader: tag ->
    [(step, value)] (values as TensorBoard stores them: float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(folder: Path) -> dict[str, list[tuple[int, float]]]:
        events = EventAccumulator(str(folder))
        events.Reload()
        tags = events.Tags()["scalars"]
        return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}

    return read


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `gpulab ARGS...` in this process through the real entry point; return code and output."""
    from gpulab.cli import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["gpulab", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


RECORDS = Path(__file__).parent / "data" / "records"


@pytest.fixture
def old_record():
    """A record.json as gpulab wrote it at schema 1 (kind: training_digits, training_stocks or
    stylize), as a dict to change; `write` puts it into a run folder."""

    def load(kind: str = "training_stocks", **changes) -> dict:
        return {**json.loads((RECORDS / f"v1_{kind}.json").read_text()), **changes}

    return load


@pytest.fixture
def write_record_json(old_record):
    """Write a schema-1 record (`old_record` kind and top-level changes) into `run_dir`."""

    def write(run_dir: Path, kind: str = "training_stocks", **changes) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "record.json"
        path.write_text(json.dumps(old_record(kind, **changes)))
        return path

    return write


@pytest.fixture
def runs_root(tmp_path):
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    """A small generated market in the data_stocks.csv schema: 600 minutes x 8 stocks."""
    path = tmp_path_factory.mktemp("data") / "stocks.csv"
    write_stocks_csv(generate_stocks(rows=600, stocks=8, seed=3), path)
    return path


@pytest.fixture
def torchrun():
    """Run `gpulab ARGS` under torchrun with N local CPU processes (one thread each)."""

    def run(nproc: int, *args, launcher=(), env=None, timeout: int = 180):
        cmd = torchrun_command(nproc, *args, launcher=launcher)
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=full_env, check=False
        )

    return run


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by Playwright (`make test` installs chromium)."""
    import shutil

    from playwright.sync_api import sync_playwright

    path = shutil.which("chromium")
    assert path, "chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()
