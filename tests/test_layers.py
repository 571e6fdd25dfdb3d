"""The layer order of DESIGN.md, kept by import-linter's contract in pyproject.toml.

runtime < data < workloads < train < probe, bench < web < cli: no module imports from a layer
above its own, not even inside a function.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(no_cache=True, no_logo=True))"
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter run on the gpulab under root/src with root/pyproject.toml's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_layer_order_is_kept():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 1 kept, 0 broken." in r.stdout


def test_every_top_level_package_has_a_layer():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    layered = {name.strip() for layer in contract["layers"] for name in layer.split(":")}
    top = {
        p.stem
        for p in (ROOT / "src" / "gpulab").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file()) and not p.name.startswith("__")
    }
    assert top == layered


def test_a_back_import_breaks_the_contract(tmp_path):
    shutil.copytree(
        ROOT / "src" / "gpulab",
        tmp_path / "src" / "gpulab",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    errors = tmp_path / "src" / "gpulab" / "runtime" / "errors.py"
    # inside a function: a lazy import is a back-import too
    errors.write_text(
        errors.read_text() + "\n\ndef _late():\n    import gpulab.cli  # noqa: F401\n"
    )
    r = lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Contracts: 0 kept, 1 broken." in r.stdout
    assert "gpulab.runtime.errors -> gpulab.cli" in r.stdout
