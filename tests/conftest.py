"""Shared fixtures: CLI runner, temp runs root, tiny stock CSVs."""

import os
import subprocess
import sys
from dataclasses import dataclass

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
