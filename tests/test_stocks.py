import numpy as np
import pandas as pd
import pytest
import torch

from gpulab.runtime import GpulabError
from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload
from gpulab.workloads.stocks.data import generate_stocks, read_stocks_csv, split_and_scale
from gpulab.workloads.stocks.model import StockMLP
from gpulab.workloads.stocks.workload import test_metrics as stocks_test_metrics


def test_generator_writes_the_exact_schema(tiny_csv):
    frame = pd.read_csv(tiny_csv)
    assert list(frame.columns[:2]) == ["DATE", "SP500"]
    constituents = list(frame.columns[2:])
    assert len(constituents) == 8 and len(frame) == 600
    assert all(
        c.split(".")[0] in ("NASDAQ", "NYSE") and c.split(".")[1].isupper() for c in constituents
    )
    assert len(set(constituents)) == len(constituents)
    assert frame["DATE"].dtype == np.int64
    minutes = np.diff(frame["DATE"].to_numpy())
    assert (minutes[:389] == 60).all() and minutes[389] > 60  # one session, then the next day
    assert frame.notna().all().all() and (frame.iloc[:, 1:] > 0).all().all()


def test_generator_is_deterministic_and_index_leads_by_one_minute():
    a = generate_stocks(rows=300, stocks=12, seed=5)
    b = generate_stocks(rows=300, stocks=12, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_stocks(rows=300, stocks=12, seed=6))
    # SP500 is a weighted sum of the constituents one minute ahead: regressing row t's SP500 on
    # row t+1's prices fits (almost) exactly, far better than on row t's own prices.
    prices, index = a.iloc[:, 2:].to_numpy(), a["SP500"].to_numpy()
    ahead = np.linalg.lstsq(prices[1:], index[:-1], rcond=None)[1][0]
    same = np.linalg.lstsq(prices[:-1], index[:-1], rcond=None)[1][0]
    assert ahead < 1e-3 * same


def test_scaler_is_fit_on_training_rows_only():
    rows = 20
    frame = pd.DataFrame(
        {
            "DATE": np.arange(rows) * 60,
            "SP500": np.linspace(100, 120, rows),
            "NYSE.A": np.arange(rows, dtype=float),
        }
    )
    frame.loc[16:, "NYSE.A"] = 1000.0  # test rows far outside the training range
    split = split_and_scale(frame, train_fraction=0.8, batch_size=4, source="hand-made")
    assert split.train_rows == 16
    assert split.scaler.data_max_[1] == 15.0  # the test rows' 1000 did not reach the scaler
    assert split.x_train.min() == -1.0 and split.x_train.max() == 1.0
    assert (split.x_test > 1.0).all()


def test_persistence_and_mean_baselines_on_a_hand_made_csv(tmp_path):
    sp500 = [10.0, 11.0, 13.0, 16.0, 20.0, 25.0, 31.0, 38.0, 46.0, 55.0]
    path = tmp_path / "hand.csv"
    pd.DataFrame({"DATE": np.arange(10) * 60, "SP500": sp500, "NYSE.X": np.arange(10.0)}).to_csv(
        path, index=False
    )
    split = split_and_scale(read_stocks_csv(path), train_fraction=0.8, batch_size=2, source="hand")
    metrics = stocks_test_metrics(split, predicted_scaled=split.y_test.copy())
    # test rows 8, 9 (46, 55) are predicted by the rows before them (38, 46)
    assert metrics["persistence_mse_points"] == pytest.approx(((46 - 38) ** 2 + (55 - 46) ** 2) / 2)
    assert metrics["persistence_mape_pct"] == pytest.approx(100 * (8 / 46 + 9 / 55) / 2)
    mean = np.mean(sp500[:8])
    assert metrics["train_mean_mse_points"] == pytest.approx(
        ((46 - mean) ** 2 + (55 - mean) ** 2) / 2
    )
    assert metrics["test_mse_points"] == pytest.approx(0.0, abs=1e-18)
    assert metrics["beats_persistence"] is True


def test_model_is_glorot_with_zero_bias_and_squeezed_output():
    model = StockMLP(500)
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [1024, 512, 256, 128, 1]
    first = linears[0].weight
    bound = (6 / (500 + 1024)) ** 0.5
    assert first.abs().max() <= bound and first.abs().max() > 0.9 * bound
    assert all((m.bias == 0).all() for m in linears)
    assert model(torch.randn(7, 500)).shape == (7,)


def _debug(**changes):
    return get_workload("stocks").config("debug", {k: str(v) for k, v in changes.items()})


def test_train_writes_record_plots_and_checkpoint(runs_root):
    result = train("stocks", _debug(), TrainOptions(device="cpu", out=runs_root, quiet=True))
    rec = result.record
    run_dir = result.run_dir
    assert run_dir.parent == runs_root / "stocks" and run_dir.name.endswith("-cpu")
    assert {"record.json", "checkpoint.pt", "loss.png", "predictions.png"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert rec.status == "complete" and rec.position.global_step == 50
    timing = rec.timing
    assert timing.timed_steps == 48 and timing.warmup_steps_excluded == 2
    assert timing.samples_per_s > 0 and 0 <= timing.data_wait_fraction < 1
    assert [h["step"] for h in rec.history] == list(range(5, 51, 5))
    assert all(np.isfinite(h["test_mse"]) and np.isfinite(h["train_loss"]) for h in rec.history)
    m = rec.metrics
    assert m["train_rows"] == 1600 and m["test_rows"] == 400
    assert np.isfinite(m["test_mse_points"]) and m["persistence_mse_points"] > 0
    assert "persistence" in rec.verdict
    env = rec.environment
    assert env.torch_version == torch.__version__ and env.device["type"] == "cpu"
    assert env.torch_threads >= 1 and list(rec.config["hidden"]) == [64, 32, 16, 8]


def _final_weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_resume_continues_exactly_where_it_stopped(runs_root):
    cfg = _debug()
    whole = train("stocks", cfg, TrainOptions(device="cpu", out=runs_root / "a", quiet=True))
    # stopped mid-epoch, then resumed in the same run folder
    part = train(
        "stocks", cfg, TrainOptions(device="cpu", out=runs_root / "b", quiet=True, max_steps=37)
    )
    assert part.record.status == "stopped" and part.record.position.global_step == 37
    resumed = train("stocks", None, TrainOptions(device="cpu", quiet=True), resume=part.run_dir)
    assert resumed.run_dir == part.run_dir and resumed.record.status == "complete"
    assert resumed.record.options.resumed_from_step == 37
    assert resumed.record.timing.timed_steps == 50 - 37 - 2  # this segment, warm-up excluded
    a, b = _final_weights(whole.run_dir), _final_weights(resumed.run_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in resumed.record.history][:7] == [5, 10, 15, 20, 25, 30, 35]


def test_too_few_rows_for_one_batch(tmp_path):
    with pytest.raises(GpulabError, match="fewer than one batch of 64"):
        train(
            "stocks", _debug(rows=60), TrainOptions(device="cpu", out=tmp_path / "runs", quiet=True)
        )
    assert not (tmp_path / "runs" / "stocks").exists() or not any(
        (tmp_path / "runs" / "stocks").iterdir()
    )


@pytest.mark.cuda
def test_gpu_path_matches_cpu_and_uses_a_cuda_graph(runs_root):
    cfg = _debug()
    cpu = train("stocks", cfg, TrainOptions(device="cpu", out=runs_root, quiet=True))
    eager = train(
        "stocks", cfg, TrainOptions(device="cuda", out=runs_root, quiet=True, cuda_graph=False)
    )
    graphed = train("stocks", cfg, TrainOptions(device="cuda", out=runs_root, quiet=True))
    assert graphed.record.options.cuda_graph is True
    assert eager.record.options.cuda_graph is False
    assert graphed.record.timing.clock == "cuda events"
    a, b, c = (_final_weights(r.run_dir) for r in (cpu, eager, graphed))
    for k in a:
        # the graphed step is the eager step, replayed: same kernels, same numbers
        assert torch.allclose(b[k], c[k], rtol=1e-5, atol=1e-6), (k, (b[k] - c[k]).abs().max())
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), (k, (a[k] - b[k]).abs().max())
    assert graphed.record.memory.peak_allocated_bytes > 0


@pytest.mark.cuda
def test_gpu_resume_and_bf16(runs_root):
    cfg = _debug()
    whole = train("stocks", cfg, TrainOptions(device="cuda", out=runs_root / "a", quiet=True))
    part = train(
        "stocks", cfg, TrainOptions(device="cuda", out=runs_root / "b", quiet=True, max_steps=30)
    )
    resumed = train("stocks", None, TrainOptions(device="cuda", quiet=True), resume=part.run_dir)
    a, b = _final_weights(whole.run_dir), _final_weights(resumed.run_dir)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    bf16 = train(
        "stocks", cfg, TrainOptions(device="cuda", precision="bf16", out=runs_root, quiet=True)
    )
    assert np.isfinite(bf16.record.metrics["test_mse"])
    tf32 = train(
        "stocks", cfg, TrainOptions(device="cuda", precision="tf32", out=runs_root, quiet=True)
    )
    assert np.isfinite(tf32.record.metrics["test_mse"])


@pytest.mark.cuda
def test_gpu_compiled_and_graphed_step_learns_the_same(runs_root):
    cfg = _debug()
    eager = train(
        "stocks", cfg, TrainOptions(device="cuda", out=runs_root, quiet=True, cuda_graph=False)
    )
    both = train(
        "stocks", cfg, TrainOptions(device="cuda", out=runs_root, quiet=True, compile=True)
    )
    assert both.record.options.compile is True and both.record.options.cuda_graph is True
    a, b = _final_weights(eager.run_dir), _final_weights(both.run_dir)
    for k in a:  # compiled kernels fuse differently: rounding differs, the steps do not
        assert torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_cpu_threads_default_is_capped_for_small_models(monkeypatch):
    import psutil

    import gpulab.runtime.device as device
    from gpulab.train import cpu_threads
    from gpulab.workloads.registry import get_workload

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16)
    monkeypatch.setattr(device, "usable_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    stocks, cnn = get_workload("stocks"), get_workload("cnn")
    assert cpu_threads(None, stocks) == 4 and cpu_threads(None, cnn) == 16
    monkeypatch.setattr(device, "usable_cores", lambda: 6)  # a container limited to 6 CPUs
    assert cpu_threads(None, stocks) == 4 and cpu_threads(None, cnn) == 6
    monkeypatch.setattr(device, "usable_cores", lambda: 16)
    assert cpu_threads(12, stocks) == 12  # --threads wins
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert cpu_threads(None, stocks) == 8  # as does OMP_NUM_THREADS
