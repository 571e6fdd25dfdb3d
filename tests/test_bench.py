"""gpulab bench: the suite, its statistics, the reports (opened in a real browser), compare."""

import json
import re
import subprocess
import types
from pathlib import Path

import pytest

import gpulab.bench.suite as suite
from gpulab.bench import stats
from gpulab.bench.compare import compare, load_results
from gpulab.runtime import records
from helpers import FakeClock

TINY = {
    "digits": (
        ["--preset", "debug", "--set", "eval_every=0"],
        ["--preset", "debug", "--stop-at-quality", "--set", "target_accuracy=0.5"],
    ),
    "cnn": (["--preset", "debug", "--set", "steps_per_epoch=4", "--set", "warmup_steps=1"], None),
}


@pytest.fixture
def tiny_suite(monkeypatch):
    for name, args in TINY.items():
        monkeypatch.setitem(suite.QUICK, name, args)


def test_olympic_mean_iqr_cv_against_hand_computed_values():
    assert stats.olympic_mean([1.0, 2.0, 3.0, 10.0]) == 2.5  # 1 and 10 dropped
    assert stats.olympic_mean([4.0, 6.0]) == 5.0  # fewer than three: the plain mean
    assert stats.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0  # quartiles 2 and 4
    assert stats.cv([2.0, 4.0]) == pytest.approx(2**0.5 / 3)  # stdev sqrt(2), mean 3
    assert stats.cv([5.0]) is None
    s = stats.summarize([100.0, 100.0, 130.0])
    assert s["noisy"] and s["median"] == 100.0 and s["n"] == 3


def test_speedup_interval_against_hand_computed_values():
    # geometric means: sqrt(10*12)=10.954, sqrt(100*110)=104.88 -> 9.574; Welch t with 1.51
    # degrees of freedom on the log scale (se 0.1029, t 5.99) -> [5.18, 17.69]
    s = stats.speedup([10.0, 12.0], [100.0, 110.0])
    assert s["speedup"] == pytest.approx(9.5743, rel=1e-4)
    assert s["low"] == pytest.approx(5.1814, rel=1e-3) and s["high"] == pytest.approx(
        17.6915, rel=1e-3
    )
    one = stats.speedup([10.0], [50.0])
    assert one["speedup"] == pytest.approx(5.0) and one["low"] is None
    # a run that timed no step (0 samples/s) is left out; a side with none has no speedup
    assert stats.speedup([0.0, 10.0], [50.0])["speedup"] == pytest.approx(5.0)
    assert stats.speedup([0.0], [50.0]) is None


def test_a_quality_speedup_needs_every_run_on_both_sides_to_reach_the_target():
    def row(device, times, reached):
        return {
            "workload": "digits",
            "device": device,
            "mode": "quality",
            "samples_per_s_runs": [1000.0, 1100.0] if device == "cpu" else [9000.0, 9900.0],
            "time_to_quality": {"olympic_mean": times} if times else None,
            "reached_all": reached,
        }

    rows = [row("cpu", 10.0, True), row("cuda", 4.0, True)]
    suite._add_speedups(rows)
    assert rows[1]["speedup_vs_cpu"]["speedup"] == pytest.approx(2.5)
    # the GPU reached the target in one run of two: no ratio, not a throughput ratio instead
    rows = [row("cpu", 10.0, True), row("cuda", 4.0, False)]
    suite._add_speedups(rows)
    assert rows[1]["speedup_vs_cpu"] is None
    rows = [row("cpu", None, False), row("cuda", 4.0, True)]
    suite._add_speedups(rows)
    assert rows[1]["speedup_vs_cpu"] is None


def _child_writing(record_text: str, calls: list):
    """A stand-in for `gpulab train` in a subprocess: writes one run under its --out, prints
    nothing."""

    def run(cmd, **kwargs):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        run_dir = out / "digits" / "20261203T135439.256997Z-cpu"
        run_dir.mkdir(parents=True)
        (run_dir / "record.json").write_text(record_text)
        (run_dir / "checkpoint.pt").write_bytes(b"x")
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    return run


def test_a_bench_child_run_is_found_under_its_own_out_and_moved_beside_the_others(
    tmp_path, monkeypatch, old_record
):
    calls = []
    text = json.dumps(old_record("training_digits"))
    monkeypatch.setattr(subprocess, "run", _child_writing(text, calls))
    runs_dir = tmp_path / "runs"
    result = suite.run_job(suite.Job("digits", "cpu", "throughput", 0, []), runs_dir, None)
    assert result.ok, result.error
    moved = runs_dir / "digits" / "20261203T135439.256997Z-cpu"
    assert result.run_dir == str(moved) and (moved / "checkpoint.pt").is_file()
    assert result.record == records.read_record(moved)
    assert result.device_name == "Intel(R) Xeon(R) Processor, 2 threads"
    child_out = Path(calls[0][calls[0].index("--out") + 1])
    assert child_out.parent == runs_dir and not child_out.exists()  # its own root, removed
    assert [p.name for p in runs_dir.iterdir()] == ["digits"]


def test_a_bench_child_whose_record_cannot_be_read_is_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _child_writing('{"environment": {}}', []))
    runs_dir = tmp_path / "runs"
    result = suite.run_job(suite.Job("digits", "cpu", "throughput", 0, []), runs_dir, None)
    moved = runs_dir / "digits" / "20261203T135439.256997Z-cpu"
    assert not result.ok and result.error == (
        f"{moved / 'record.json'} is not a readable run record (schema_version is null, not a version number); "
        "pass another run"
    )


def test_quick_suite_writes_reports_and_results(run_cli, tmp_path, tiny_suite, browser):
    out = tmp_path / "bench"
    r = run_cli("bench", "digits", "cnn", "--devices", "cpu", "--repeats", "2", "--out", out)
    assert r.code == 0, r.err
    last = json.loads(r.out.strip().splitlines()[-1])
    assert last["bench"] == str(out) and len(last["rows"]) == 3
    lines = r.out.splitlines()  # not a terminal: each run says when it starts and ends
    started = lines.index("  cnn throughput on cpu (2/2): running")
    assert re.fullmatch(r"  cnn throughput on cpu \(2/2\): \d+\.\d s", lines[started + 1])
    res = json.loads((out / "results.json").read_text())
    assert res["method_version"] == suite.METHOD_VERSION and res["repeats"] == 2
    rows = {(x["workload"], x["mode"]): x for x in res["rows"]}
    assert set(rows) == {("digits", "throughput"), ("digits", "quality"), ("cnn", "throughput")}
    thr = rows[("cnn", "throughput")]
    assert thr["samples_per_s"]["n"] == 2 and len(thr["samples_per_s_runs"]) == 2
    assert thr["speedup_vs_cpu"]["speedup"] == pytest.approx(1.0) and thr["mfu"] is None
    assert thr["achieved_tflops"] > 0 and thr["step_s"] and 0 <= thr["data_wait_fraction"] < 1
    if cpu_reason := thr["energy"]["sources"]["cpu"]["reason"]:  # said under the table
        assert f"Energy not measured — CPU packages: {cpu_reason}." in r.out
    gpu, cpu = thr["energy"]["sources"]["gpu"], thr["energy"]["sources"]["cpu"]
    assert gpu["source"] is None and gpu["reason"] == "device is cpu: no GPU energy to read"
    assert (cpu["source"] is None) == (cpu["reason"] is not None)  # measured, or why not
    assert (thr["energy"]["joules_per_sample"] is None) == (cpu["source"] is None)
    q = rows[("digits", "quality")]
    assert q["quality_metric"] == "test_accuracy" and q["quality_target"] == 0.5
    assert q["reached"] == "2/2" and q["time_to_quality"]["n"] == 2 and q["curves"][0]
    assert all((tmp_path / "bench" / "runs").glob("*/*/record.json"))
    assert res["probe"]["verdict"]  # the quick probe ran first
    md = (out / "report.md").read_text()
    assert "| digits | quality | cpu" in md and "## Machine" in md and "energy/sample" in md

    html = (out / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:)', html)  # self-contained: no external assets
    page = browser.new_page()
    page.goto((out / "report.html").as_uri())
    assert page.locator("#summary tbody tr").count() == 3
    widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) >= 4 and all(w > 100 for w in widths)
    assert "digits" in page.locator("#summary").inner_text()
    page.screenshot(path=str(out / "report.png"), full_page=True)
    page.close()
    assert (out / "report.png").stat().st_size > 10_000


def test_a_failing_run_is_recorded_and_the_rest_continue(
    run_cli, tmp_path, tiny_suite, monkeypatch
):
    monkeypatch.setitem(suite.QUICK, "cnn", (["--preset", "debug", "--set", "model=nope"], None))
    out = tmp_path / "bench"
    r = run_cli("bench", "cnn", "digits", "--devices", "cpu", "--no-probe", "--out", out)
    assert r.code == 0, r.err
    res = json.loads((out / "results.json").read_text())
    cnn = next(x for x in res["rows"] if x["workload"] == "cnn")
    assert cnn["failed"] and "unknown model 'nope'" in cnn["failed"][0]
    assert all(not x["failed"] for x in res["rows"] if x["workload"] == "digits")
    assert "failed 1: unknown model 'nope'" in (out / "report.md").read_text()


def test_ctrl_c_still_writes_a_report_of_what_finished(
    run_cli, tmp_path, tiny_suite, monkeypatch, tb_scalars
):
    real, calls = suite.run_job, []

    def interrupted(job, runs_dir, threads):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, runs_dir, threads)

    monkeypatch.setattr(suite, "run_job", interrupted)
    out = tmp_path / "bench"
    r = run_cli("bench", "cnn", "--devices", "cpu", "--repeats", "2", "--no-probe", "--out", out,
                "--tag", "dev box")  # fmt: skip
    assert r.code == 0, r.err
    assert "interrupted; reporting what finished" in r.out
    res = json.loads((out / "results.json").read_text())
    assert res["interrupted"] is True and len(res["runs"]) == 1 and res["tag"] == "dev box"
    assert "Interrupted: partial results" in (out / "report.html").read_text()
    assert (out / "report.md").read_text().splitlines()[2].startswith("dev box · ")
    [row] = res["rows"]  # the summary figures as TensorBoard scalars beside the report
    assert tb_scalars(out / "tb") == {
        "samples_per_s/cnn/cpu/throughput": [
            (0, pytest.approx(row["samples_per_s"]["olympic_mean"], rel=1e-6))
        ]
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown workload 'nope'; choose one of"),
        (["digits", "--devices", "tpu"], "unknown device"),
        (["digits", "--quick", "--full"], "--quick and --full exclude each other"),
        (["digits", "--repeats", "0"], "--repeats must be at least 1"),
        (["digits", "--tag", " vm "], "--tag ' vm ': a machine's name is 1 to 64 printable"),
        (["digits", "--tag", "a\nb"], "--tag 'a\\nb'"),
    ],
)
def test_bad_bench_requests(run_cli, tmp_path, args, message):
    r = run_cli("bench", *args, "--no-probe", "--out", tmp_path / "b")
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1


def test_a_non_empty_out_is_refused_without_force(run_cli, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("keep me")
    r = run_cli("bench", "digits", "--no-probe", "--out", tmp_path / "b")
    assert r.code == 2 and "exists and is not empty" in r.err and "--force" in r.err
    assert (tmp_path / "b" / "old.txt").read_text() == "keep me"


def _results(path, rates_cpu, rates_gpu, version=suite.METHOD_VERSION, tag=None, extra=()):
    def row(device, rates):
        return {
            "workload": "cnn",
            "device": device,
            "mode": "throughput",
            "samples_per_s": stats.summarize(rates),
            "samples_per_s_runs": rates,
        }

    rows = [row("cpu", rates_cpu), row("cuda", rates_gpu), *[row(d, [1.0]) for d in extra]]
    doc = {"method_version": version, "tag": tag, "rows": rows}
    path.write_text(json.dumps(doc))
    return path


def test_compare_two_fabricated_result_sets(run_cli, tmp_path):
    a = _results(tmp_path / "a.json", [100.0, 102.0, 98.0], [3000.0, 3050.0, 2950.0])
    b = _results(tmp_path / "b.json", [101.0, 99.0, 100.0], [3600.0, 3700.0, 3650.0])
    rows = {r["device"]: r for r in compare(load_results(a), load_results(b))}
    assert rows["cpu"]["note"] == "within the noise of the repeats"
    assert rows["cuda"]["note"] == "B faster" and rows["cuda"]["ratio"] == pytest.approx(
        1.2165, rel=1e-3
    )
    r = run_cli("report", "compare", a, b, "--out", tmp_path / "c.md")
    assert r.code == 0 and "| cnn | cuda | throughput | 3,000 | 3,650 | 1.22 |" in r.out
    assert (tmp_path / "c.md").read_text() == r.out


def test_compare_says_when_a_side_timed_nothing(run_cli, tmp_path):
    a = _results(tmp_path / "a.json", [100.0, 102.0], [0.0])
    b = _results(tmp_path / "b.json", [101.0, 99.0], [3600.0])
    rows = {r["device"]: r for r in compare(load_results(a), load_results(b))}
    assert rows["cuda"]["ratio"] is None and rows["cuda"]["note"] == "a side timed no step"
    r = run_cli("report", "compare", a, b)
    assert r.code == 0 and "|  |  | a side timed no step |" in r.out


def test_compare_refuses_other_files_and_other_methods(run_cli, tmp_path):
    a = _results(tmp_path / "a.json", [100.0], [3000.0])
    old = _results(tmp_path / "old.json", [100.0], [3000.0], version=1)
    (tmp_path / "x.json").write_text('{"hello": 1}')
    r = run_cli("report", "compare", a, old)
    assert r.code == 2 and "method_version 1" in r.err and "same method" in r.err
    r = run_cli("report", "compare", a, tmp_path / "x.json")
    assert r.code == 2 and "is not a gpulab bench result" in r.err
    r = run_cli("report", "compare", a, tmp_path)
    assert r.code == 2 and "no results.json there" in r.err


def test_a_fleet_is_compared_with_its_first_machine(run_cli, tmp_path):
    first = _results(
        tmp_path / "a.json", [100.0, 102.0, 98.0], [3000.0, 3050.0, 2950.0], tag="bare"
    )
    vm = _results(tmp_path / "b.json", [101.0, 99.0, 100.0], [3600.0, 3700.0, 3650.0], tag="vm")
    third = _results(tmp_path / "c.json", [80.0, 79.0, 81.0], [3020.0, 2980.0, 3000.0])
    r = run_cli("report", "compare", first, vm, third, "--out", tmp_path / "fleet.md")
    assert r.code == 0, r.err
    assert "1. bare" in r.out and "2. vm" in r.out and f"3. {third}" in r.out
    cuda = r.out.split("### cnn throughput on cuda")[1]
    assert "| bare | 3,000 | 1 |  | reference |" in cuda
    assert "| vm | 3,650 | 1.22 |" in cuda and "| faster |" in cuda.splitlines()[5]
    assert f"| {third} | 3,000 | 1.00 |" in cuda and "within the noise of the repeats" in cuda
    cpu = r.out.split("### cnn throughput on cpu")[1].split("###")[0]
    assert f"| {third} | 80 | 0.80 | 0.77-0.83 | slower |" in cpu
    assert (tmp_path / "fleet.md").read_text() == r.out
    for device in ("cpu", "cuda"):
        chart = tmp_path / f"fleet-cnn-{device}-throughput.png"
        assert chart.read_bytes()[:4] == b"\x89PNG" and f"]({chart.name})" in r.out


def test_a_fleet_compares_what_it_can_and_says_what_differs(run_cli, tmp_path):
    first = _results(tmp_path / "a.json", [100.0, 102.0], [3000.0, 3050.0], tag="a")
    other = _results(tmp_path / "b.json", [101.0, 99.0], [3600.0, 3700.0], tag="b", extra=["mps"])
    old = _results(tmp_path / "c.json", [100.0], [3000.0], version=1, tag="c")
    r = run_cli("report", "compare", first, other, old)
    assert r.code == 0, r.err
    assert f"- left out: {old} was measured with method_version 1, the first with" in r.out
    assert "- only in b: cnn mps throughput (not compared)" in r.out
    assert "### cnn throughput on cuda" in r.out and "### cnn throughput on mps" not in r.out
    r = run_cli("report", "compare", old, first, _results(tmp_path / "d.json", [1.0], [2.0]))
    assert r.code == 2 and "no two results were measured with the same method" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_without_out_the_runs_join_every_other_run(run_cli, tmp_path, tiny_suite, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli("bench", "cnn", "--devices", "cpu", "--no-probe")
    assert r.code == 0, r.err
    (report,) = (tmp_path / "runs" / "bench").iterdir()
    assert (report / "report.html").is_file() and not (report / "runs").exists()
    (run,) = (tmp_path / "runs" / "cnn").iterdir()
    assert json.loads((report / "results.json").read_text())["runs"][0]["run_dir"].endswith(
        run.name
    )
    r = run_cli("runs", "--out", tmp_path / "runs")
    assert r.code == 0 and "cnn" in r.out


def test_loader_rate_times_the_steady_rate_after_the_workers_first_batches(monkeypatch):
    """Three workers deliver their first batches at once at t = 1 s, then one batch of 10
    samples every 0.5 s: the steady rate is 20 samples/s."""
    import torch

    import gpulab.bench.diagnose as diagnose

    clock = FakeClock()
    monkeypatch.setattr(diagnose, "time", types.SimpleNamespace(perf_counter=clock))

    def batches(count):
        for k in range(count):
            clock.now_s = 1.0 + 0.5 * max(0, k - 2)
            yield torch.zeros(10, 3), torch.zeros(10)

    cpu = torch.device("cpu")
    assert diagnose.loader_rate(batches(20), cpu, steps=4, warm=4) == pytest.approx(20.0)
    # timed from the first batch, the workers' head start shows as a faster loader
    assert diagnose.loader_rate(batches(20), cpu, steps=4, warm=1) == pytest.approx(40 / 1.5)
    # a stream too short to skip the start is timed after its first batch
    assert diagnose.loader_rate(batches(4), cpu, steps=4, warm=4) == pytest.approx(30 / 0.5)
    # so is one that ends with the batch that would have started the clock
    assert diagnose.loader_rate(batches(5), cpu, steps=4, warm=4) == pytest.approx(40 / 1.0)
    assert diagnose.loader_rate(batches(1), cpu, steps=4, warm=4) == 0.0
