# The two commands that do everything on a fresh machine:
#   make run    set up .venv if missing, then run the main job (gpulab bench on embedded data)
#   make test   set up .venv if missing, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint setup browser slurm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir -e '.[dev,web,mlflow]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/gpulab bench --quick

# The report and web tests open pages in a real headless browser: Debian's chromium.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# tests/test_slurm.py starts a one-machine Slurm: Debian's slurm-wlm and munge.
slurm:
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; }

test: $(STAMP) browser slurm
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
