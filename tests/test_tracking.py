"""Every run's TensorBoard events and the MLflow log (`--mlflow`), read back with each tool's
own reader, and their bad inputs: a TensorBoard folder that cannot be written, MLflow not
installed, an MLflow server that cannot be reached."""

import json
import sys
from pathlib import Path

import pytest

from gpulab.runtime import records
from helpers import free_port

TINY = ("--preset", "debug", "--device", "cpu", "--quiet")


def _record(out) -> tuple:
    run_dir = records.only_run(out)
    return run_dir, records.read_record(run_dir)


def test_a_run_writes_tensorboard_events_equal_to_its_record(run_cli, tmp_path, tb_scalars):
    r = run_cli("train", "stocks", *TINY, "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    run_dir, rec = _record(tmp_path / "runs")
    assert "tb" in rec.artifacts
    got = tb_scalars(run_dir / "tb")
    evals = [(row["step"], row["test_mse"]) for row in rec.history]
    assert len(evals) > 1 and [s for s, _ in got["eval/test_mse"]] == [s for s, _ in evals]
    assert [v for _, v in got["eval/test_mse"]] == pytest.approx([v for _, v in evals], rel=1e-6)
    losses = [row["train_loss"] for row in rec.history]
    assert [v for _, v in got["train/loss"]] == pytest.approx(losses, rel=1e-6)
    lrs = [v for _, v in got["train/learning_rate"]]
    assert lrs == pytest.approx([rec.config["lr"]] * len(evals), rel=1e-6)
    last = rec.position.global_step
    expected = {
        "final/test_mse": rec.metrics["test_mse"],
        "final/persistence_mse_points": rec.metrics["persistence_mse_points"],
        "timing/samples_per_s": rec.timing.samples_per_s,
        "timing/data_wait_fraction": rec.timing.data_wait_fraction,
        "memory/peak_mib": rec.memory.peak_bytes / 2**20,
    }
    for tag, value in expected.items():
        assert got[tag] == [(last, pytest.approx(value, rel=1e-6))], tag
    assert "final/beats_persistence" not in got  # a yes/no is no scalar


def test_the_settings_are_tensorboard_hparams(run_cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    r = run_cli("train", "stocks", *TINY, "--set", "epochs=1", "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    run_dir, rec = _record(tmp_path / "runs")
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["lr"].number_value == pytest.approx(rec.config["lr"])
    assert hp["epochs"].number_value == 1 and hp["precision"].string_value == "fp32"
    assert hp["device"].string_value == "cpu"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert [m.name.tag for m in exp.experiment.metric_infos] == [
        "final/test_mse",
        "timing/samples_per_s",
    ]


def test_a_tensorboard_folder_that_cannot_be_written_stops_the_run_before_training(
    run_cli, tmp_path
):
    r = run_cli("train", "stocks", *TINY, "--max-steps", "3", "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    run_dir, rec = _record(tmp_path / "runs")
    (run_dir / "record.json").rename(tmp_path / "stopped.json")
    (run_dir / "record.json").write_text((tmp_path / "stopped.json").read_text())
    for f in (run_dir / "tb").iterdir():
        f.unlink()
    (run_dir / "tb").rmdir()
    (run_dir / "tb").write_text("not a folder")  # what a read-only folder is to a non-root user
    r = run_cli("train", "stocks", "--resume", run_dir, "--device", "cpu", "--quiet")
    assert r.code == 2
    assert r.err.strip().splitlines() == [
        f"gpulab: error: TensorBoard folder {run_dir / 'tb'} is not writable (File exists); make it a "
        "writable folder (remove what stands in its place) and run again"
    ]
    assert records.read_record(run_dir).position.global_step == 3  # no step was taken


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    """A local MLflow file store; gpulab allows MLflow 3's file store for `file:` URIs itself."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored (unset) afterwards
    return f"file:{tmp_path / 'mlruns'}"


def test_mlflow_holds_the_settings_metrics_over_steps_and_artifacts(run_cli, tmp_path, file_store):
    from mlflow.tracking import MlflowClient

    r = run_cli("train", "stocks", *TINY, "--mlflow", file_store, "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    run_dir, rec = _record(tmp_path / "runs")
    client = MlflowClient(tracking_uri=file_store)
    experiment = client.get_experiment_by_name("gpulab-stocks")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["gpulab.run_dir"] == str(run_dir)
    params = run.data.params
    assert params["lr"] == str(rec.config["lr"]) and params["batch_size"] == str(
        rec.config["batch_size"]
    )
    assert params["device"] == "cpu" and params["precision"] == "fp32"
    history = client.get_metric_history(run.info.run_id, "eval/test_mse")
    assert [(m.step, m.value) for m in history] == [
        (row["step"], pytest.approx(row["test_mse"])) for row in rec.history
    ]
    assert run.data.metrics["final/test_mse"] == pytest.approx(rec.metrics["test_mse"])
    assert run.data.metrics["timing/samples_per_s"] == pytest.approx(rec.timing.samples_per_s)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"record.json", "loss.png", "predictions.png"}
    copy = client.download_artifacts(run.info.run_id, "record.json", str(tmp_path / "dl"))
    assert json.loads(Path(copy).read_text()) == json.loads((run_dir / "record.json").read_text())


def test_the_tracking_uri_may_come_from_the_environment(run_cli, tmp_path, file_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", file_store)
    r = run_cli("train", "stocks", *TINY, "--max-steps", "2", "--out", tmp_path / "runs")
    assert r.code == 0, r.err
    experiment = MlflowClient(tracking_uri=file_store).get_experiment_by_name("gpulab-stocks")
    assert experiment is not None


def test_without_the_mlflow_extra_the_run_does_not_start(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails as uninstalled
    r = run_cli("train", "stocks", *TINY, "--mlflow", "http://127.0.0.1:5000", "--out",
                tmp_path / "runs")  # fmt: skip
    assert r.code == 2
    assert r.err.strip().splitlines() == [
        "gpulab: error: --mlflow http://127.0.0.1:5000 (or MLFLOW_TRACKING_URI) needs MLflow: "
        "pip install 'gpulab[mlflow]', or drop --mlflow and unset MLFLOW_TRACKING_URI"
    ]
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_mlflow_server_is_one_line_and_the_run_is_kept(
    run_cli, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = run_cli("train", "stocks", *TINY, "--max-steps", "5", "--mlflow", uri, "--out",
                tmp_path / "runs")  # fmt: skip
    assert r.code == 2
    run_dir, rec = _record(tmp_path / "runs")
    [line] = r.err.strip().splitlines()
    assert line == (
        f"gpulab: error: MLflow at {uri} did not take the run ([Errno 111] Connection refused); "
        f"the run is complete in {run_dir}"
    )
    assert rec.position.global_step == 5 and rec.metrics["test_mse"] > 0
    assert {"record.json", "checkpoint.pt", "loss.png"} <= {p.name for p in run_dir.iterdir()}


def test_without_tensorboard_the_run_does_not_start(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if uninstalled
    r = run_cli("train", "stocks", *TINY, "--out", tmp_path / "runs")
    assert r.code == 2
    [line] = r.err.strip().splitlines()
    assert line.startswith("gpulab: error: cannot write TensorBoard events (")
    assert line.endswith("); pip install tensorboard")
    assert not list((tmp_path / "runs").glob("*/*"))  # no run folder is left behind
