"""The public surface: every subcommand's --help, the README commands, bad input end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch


def _command_paths(group, words=()) -> list[list[str]]:
    """Every command and sub-command registered on the typer app, as the words that reach it."""
    paths = [list(words)]
    for name, command in getattr(group, "commands", {}).items():
        paths += _command_paths(command, (*words, name))
    return paths


def _app_commands() -> list[list[str]]:
    import typer.main

    from gpulab.cli import app

    return _command_paths(typer.main.get_command(app))


def test_the_command_list_comes_from_the_app():
    """The --help test below covers what the app registers, not a list kept by hand."""
    paths = {" ".join(words) for words in _app_commands()}
    assert {"", "train", "workloads", "predict stocks", "predict style", "report compare"} <= paths
    assert "caption" not in paths and len(paths) >= 20


@pytest.mark.parametrize("words", _app_commands(), ids=lambda w: " ".join(w) or "gpulab")
def test_help_of_every_subcommand(run_cli, words):
    r = run_cli(*words, "--help")
    assert r.code == 0
    assert "Usage:" in r.out


def test_devices_lists_the_cpu(run_cli):
    r = run_cli("devices")
    assert r.code == 0
    assert r.out.splitlines()[0].startswith("cpu ")


def _train_tiny(run_cli, csv, runs_root, *extra):
    """The debug preset on the tiny CSV, on the CPU, quietly."""
    args = [
        "--preset",
        "debug",
        "--set",
        f"data={csv}",
        "--set",
        "batch_size=32",
        "--device",
        "cpu",
    ]
    return run_cli("train", "stocks", *args, "--out", runs_root, "--quiet", *extra)


def test_train_predict_round_trip(run_cli, runs_root, tiny_csv, tmp_path):
    r = _train_tiny(run_cli, tiny_csv, runs_root)
    assert r.code == 0, r.err
    run_dir = runs_root / "stocks" / r.out.strip().splitlines()[-1].split("/")[-1]
    assert r.out.strip().splitlines()[-1] == f"run: {run_dir}"
    record = json.loads((run_dir / "record.json").read_text())
    assert record["config"]["data"] == str(tiny_csv)
    assert record["command"][:3] == ["gpulab", "train", "stocks"]
    assert "persistence" in r.out  # the verdict is said plainly

    out = tmp_path / "pred.csv"
    r = run_cli(
        "predict", "stocks", "--run", run_dir, "--data", tiny_csv, "-o", out, "--device", "cpu"
    )
    assert r.code == 0, r.err
    pred = pd.read_csv(out)
    source = pd.read_csv(tiny_csv)
    assert list(pred.columns) == ["DATE", "actual", "predicted"]
    assert len(pred) == len(source) and (pred["DATE"] == source["DATE"]).all()
    assert pred["actual"].tolist() == pytest.approx(source["SP500"].tolist())
    # within the index's range and close to it: the model learned something of the scale
    assert (pred["predicted"] - pred["actual"]).abs().median() < 0.05 * pred["actual"].mean()

    r = run_cli("runs", "--out", runs_root)
    assert r.code == 0 and "stocks" in r.out and "test_mse=" in r.out


def test_data_stocks_writes_the_schema(run_cli, tmp_path):
    out = tmp_path / "gen.csv"
    r = run_cli("data", "stocks", "--rows", "50", "--stocks", "4", "--out", out)
    assert r.code == 0 and "50 rows x 6 columns" in r.out
    frame = pd.read_csv(out)
    assert list(frame.columns[:2]) == ["DATE", "SP500"] and frame.shape == (50, 6)


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpulab",
            "train",
            "stocks",
            "--set",
            f"data={tmp_path / 'nope.csv'}",
            "--out",
            tmp_path / "runs",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == f"gpulab: error: no such file: {tmp_path / 'nope.csv'}; pass --set data=FILE with the path of a stocks CSV"
    )
    assert not (tmp_path / "runs" / "stocks").exists() or not any(
        (tmp_path / "runs" / "stocks").iterdir()
    )


# -- bad input: one line, exit code 2, no traceback, no run folder left ---------------------------


def _csv(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


GOOD_HEADER = "DATE,SP500,NYSE.A,NYSE.B\n"


def _rows(n, a="1.0"):
    return "".join(f"{60 * i},{100 + i},{a if i == 5 else 1.5 + i},{2.5}\n" for i in range(n))


BAD_FILES = {
    "missing": (None, "no such file"),
    "empty": ("", "the file is empty"),
    "no_sp500": ("DATE,X500,NYSE.A\n" + "0,1,2\n" * 300, "no SP500 column"),
    "non_numeric": (
        GOOD_HEADER + _rows(300, a="abc"),
        "column NYSE.A at line 7 holds 'abc', not a number",
    ),
    "nan_cell": (GOOD_HEADER + _rows(300, a="NaN"), "empty or NaN cell in column NYSE.A at line 7"),
    "empty_cell": (GOOD_HEADER + _rows(300, a=""), "empty or NaN cell in column NYSE.A at line 7"),
    "too_few_rows": (GOOD_HEADER + _rows(20), "fewer than one batch of 64"),
    "duplicate_columns": (
        "DATE,SP500,NYSE.A,NYSE.A\n" + "0,1,2,3\n" * 300,
        "duplicate column names NYSE.A",
    ),
    "not_csv": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(200), "binary file, not a CSV"),
    "header_only": (GOOD_HEADER, "no data rows"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=str)
def test_bad_stock_files(run_cli, runs_root, tmp_path, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "absent.csv" if content is None else _csv(tmp_path, content)
    r = run_cli(
        "train",
        "stocks",
        "--preset",
        "debug",
        "--set",
        f"data={path}",
        "--device",
        "cpu",
        "--out",
        runs_root,
        "--quiet",
    )
    assert r.code == 2
    assert message in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert not list(runs_root.glob("stocks/*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_unknown_device_lists_what_is_available(run_cli, runs_root):
    r = run_cli("train", "stocks", "--preset", "debug", "--device", "cuda", "--out", runs_root)
    assert r.code == 2 and "no CUDA GPU is visible here; available: cpu" in r.err
    assert not runs_root.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--set", "epochs"], "expected KEY=VALUE"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--set", "batch_size=0"], "batch_size must be at least 1"),
        (["--set", "epochs=0"], "epochs must be at least 1"),
        (["--set", "lr=-1"], "lr must be greater than 0"),
        (["--set", "eval_every=-5"], "eval_every must be 0"),
        (["--set", "train_fraction=1.5"], "train_fraction must lie strictly between 0 and 1"),
        (["--set", "hidden=8,0"], "hidden needs widths of at least 1"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be 0"),
    ],
)
def test_bad_options(run_cli, runs_root, args, message):
    r = run_cli(
        "train", "stocks", "--preset", "debug", "--device", "cpu", "--out", runs_root, *args
    )
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1
    assert not list(runs_root.glob("stocks/*"))


def test_unknown_workload(run_cli, runs_root):
    r = run_cli("train", "weather", "--out", runs_root)
    assert r.code == 2 and "unknown workload 'weather'; choose one of stocks" in r.err


def test_unwritable_out(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run_cli(
        "train", "stocks", "--preset", "debug", "--device", "cpu", "--out", blocker / "runs"
    )
    assert r.code == 2 and "is not writable" in r.err and "--out" in r.err


def test_resume_of_a_folder_that_is_not_a_run(run_cli, tmp_path):
    r = run_cli("train", "stocks", "--resume", tmp_path)
    assert r.code == 2 and f"{tmp_path} is not a gpulab run" in r.err


def test_resume_keeps_the_precision_of_the_run(run_cli, tmp_path):
    args = ("train", "digits", "--preset", "debug", "--device", "cpu", "--quiet")
    r = run_cli(*args, "--precision", "fp32", "--max-steps", "2", "--out", tmp_path)
    assert r.code == 0, r.err
    run_dir = r.out.strip().splitlines()[-1].removeprefix("run: ")
    r = run_cli("train", "digits", "--resume", run_dir, "--precision", "bf16", "--quiet")
    assert r.code == 2 and "continues a fp32 run" in r.err and "drop --precision bf16" in r.err
    r = run_cli("train", "digits", "--resume", run_dir, "--max-steps", "4", "--quiet")
    assert r.code == 0, r.err
    assert json.loads((Path(run_dir) / "record.json").read_text())["options"]["precision"] == "fp32"


def test_resume_of_another_workloads_run(run_cli, tmp_path, write_record_json):
    run_dir = tmp_path / "caption" / "run"
    write_record_json(run_dir, workload="caption")
    r = run_cli("train", "stocks", "--resume", run_dir)
    assert r.code == 2 and "is a 'caption' run, not 'stocks'" in r.err


def test_predict_with_mismatched_columns(run_cli, runs_root, tiny_csv, tmp_path):
    r = _train_tiny(run_cli, tiny_csv, runs_root, "--set", "epochs=1")
    run_dir = r.out.strip().splitlines()[-1].removeprefix("run: ")
    other = _csv(tmp_path, GOOD_HEADER + _rows(10))
    out = tmp_path / "pred.csv"
    r = run_cli("predict", "stocks", "--run", run_dir, "--data", other, "-o", out)
    assert r.code == 2 and "constituent columns the model was trained on" in r.err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rows", "1"], "--rows of at least 2 and --stocks of at least 1"),
        (["--stocks", "0"], "--rows of at least 2 and --stocks of at least 1"),
    ],
)
def test_data_stocks_bad_sizes(run_cli, tmp_path, args, message):
    out = tmp_path / "gen.csv"
    r = run_cli("data", "stocks", "--out", out, *args)
    assert r.code == 2 and message in r.err and not out.exists()


def test_data_stocks_unwritable_out(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run_cli("data", "stocks", "--rows", "10", "--stocks", "2", "--out", blocker / "x.csv")
    assert r.code == 2 and f"cannot write {blocker / 'x.csv'}" in r.err


def test_data_folder_instead_of_file(run_cli, runs_root, tmp_path):
    r = run_cli(
        "train", "stocks", "--preset", "debug", "--set", f"data={tmp_path}", "--out", runs_root
    )
    assert (
        r.code == 2
        and "is a folder; pass --set data=FILE with the path of a stocks CSV file" in r.err
    )


# -- settings: reached only through --set, listed from the config dataclass ----------------------

STOCKS_KEYS = (
    "epochs, batch_size, lr, seed, eval_every, warmup_steps, data, rows, stocks, train_fraction, "
    "hidden"
)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--set", "depth=3"],
            f"unknown setting 'depth' for stocks; valid keys: {STOCKS_KEYS} "
            "(gpulab workloads stocks explains each)",
        ),
        (["--set", "epochs=many"], "--set epochs=many: epochs must be int"),
        (["--set", "hidden=8,x"], "--set hidden=8,x: hidden must be ints, comma-separated"),
        (["--set", "rows=1"], "rows must be at least 2 and stocks at least 1; change that setting"),
        (["--preset", "debgu"], "unknown preset 'debgu' for stocks; use one of default, debug"),
        (["--set", "epochs=0"], "epochs must be at least 1; change that setting"),
    ],
)
def test_bad_settings_are_one_exact_line(run_cli, runs_root, args, message):
    r = run_cli("train", "stocks", "--device", "cpu", "--out", runs_root, "--quiet", *args)
    assert (r.code, r.err) == (2, f"gpulab: error: {message}\n")
    assert not runs_root.exists() or not list(runs_root.glob("stocks/*"))


def test_old_workload_flags_are_gone(run_cli, runs_root):
    """Workload fields are settings, not `train` options: --epochs is refused by the parser."""
    r = run_cli("train", "stocks", "--epochs", "2", "--out", runs_root)
    assert r.code == 2 and "No such option: --epochs" in r.err


@pytest.mark.parametrize("words", [["train", "cnn", "--help"], ["workloads", "cnn"]])
def test_workload_settings_are_listed_with_meaning_and_unit(run_cli, words):
    r = run_cli(*words)
    assert r.code == 0, r.err
    rows = {line.split()[0]: line for line in r.out.splitlines() if line.startswith("  ")}
    assert rows["steps_per_epoch"].split()[1:3] == ["none", "steps"]
    assert rows["steps_per_epoch"].endswith("synthetic: None is 100; a folder: at most this")
    assert rows["image_size"].split()[1:4] == ["224", "pixels", "int"]
    assert rows["epochs"].endswith("passes over the training data")  # inherited from the base


def test_every_setting_of_every_workload_has_a_meaning():
    from gpulab.workloads.base import field_docs
    from gpulab.workloads.registry import get_workload, workload_names

    for name in workload_names():
        docs = field_docs(get_workload(name).config_cls)
        assert [d.name for d in docs if not d.meaning] == [], name


def test_workloads_lists_presets_and_a_preset_s_values(run_cli):
    r = run_cli("workloads")
    assert r.code == 0 and r.out.splitlines()[0].startswith("stocks   S&P 500")
    r = run_cli("workloads", "stocks", "--preset", "debug")
    rows = {line.split()[0]: line.split()[1] for line in r.out.splitlines()[1:]}
    assert (rows["rows"], rows["hidden"]) == ("2000", "64,32,16,8")
    r = run_cli("workloads", "stocks", "--preset", "tiny")
    assert r.code == 2 and "unknown preset 'tiny' for stocks; use one of default, debug" in r.err


def test_compile_is_a_plain_choice(run_cli, runs_root):
    r = run_cli("train", "digits", "--compile", "maybe", "--out", runs_root)
    assert r.code == 2 and "'maybe' is not one of 'auto', 'on', 'off'" in r.err


def test_old_cnn_steps_setting_is_read_back_under_its_new_name():
    from gpulab.workloads.base import config_from_dict
    from gpulab.workloads.cnn.config import CnnConfig

    cfg = config_from_dict(CnnConfig, {"model": "resnet18", "steps": 7})
    assert (cfg.model, cfg.steps_per_epoch) == ("resnet18", 7)
    assert config_from_dict(CnnConfig, {"steps_per_epoch": 3}).steps_per_epoch == 3


def test_predict_on_a_run_of_another_workload_names_the_verb(run_cli, tmp_path, write_record_json):
    run_dir = tmp_path / "caption" / "run"
    write_record_json(run_dir, workload="caption")
    out = tmp_path / "pred.csv"
    r = run_cli("predict", "stocks", "--run", run_dir, "--data", tmp_path / "x.csv", "-o", out)
    assert (r.code, r.err) == (
        2,
        f"gpulab: error: {run_dir} is a caption run, not a stocks run; "
        f"use gpulab predict caption --run {run_dir}\n",
    )
    write_record_json(run_dir, workload="digits")
    r = run_cli("predict", "caption", tmp_path / "a.png", "--run", run_dir)
    assert r.code == 2 and r.err.endswith("not a caption run; pass a `gpulab train caption` run\n")
