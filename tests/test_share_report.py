"""The share report, `report compare` of two share results and the web listing, all from
results.json dicts written by hand (method_version 1), without training anything."""

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from gpulab.bench.compare import compare_share, load_any
from gpulab.share.report import write_reports

WARMUP = (
    "each job's warm-up steps (and setup, compile, data loading) are outside its timed window; "
    "all jobs start their timed steps after a common barrier"
)


def job(job_id: str, np_runs: list[float] | None, iso: float = 1000.0, error: str | None = None):
    """One job of a share result: isolated rate `iso`, shared rate iso * NP per repeat."""
    failed = np_runs is None
    shared = None if failed else [iso * n for n in np_runs]
    return {
        "id": job_id,
        "spec": job_id.split("#")[0],
        "workload": job_id.split("#")[0],
        "settings": {},
        "isolated": {"samples_per_s": [iso, iso], "timed_s": [2.0, 2.0], "run_dirs": ["r"]},
        "shared": None
        if failed
        else {
            "samples_per_s": shared,
            "timed_s": [2.0 / n for n in np_runs],
            "turnaround_s": [2.5 / n for n in np_runs],
            "run_dirs": ["s"],
        },
        "np": np_runs,
        "np_mean": None if failed else sum(np_runs) / len(np_runs),
        "np_interval": None if failed else [min(np_runs), max(np_runs)],
        "peak_memory_bytes": 300 * 2**20,
        "failed": failed,
        "error": error,
    }


def share_results(mode: str, jobs: list[dict], stp: float, antt: float, fairness: float) -> dict:
    return {
        "kind": "share",
        "method_version": 1,
        "created_utc": "2026-12-03T15:30:00+00:00",
        "command": ["gpulab", "share", "stocks", "digits", "--device", "cpu", "--mode", mode],
        "device": "cpu",
        "device_name": "Intel(R) Xeon(R) Processor",
        "mode": mode,
        "repeats": 2,
        "warmup": WARMUP,
        "placement": {
            j["id"]: {
                "cpus": [i] if mode == "partition" else None,
                "threads": 1,
                "cuda_visible_devices": f"MIG-{i}" if mode == "partition" else None,
                "mps_threads_pct": 50 if mode == "mps" else None,
            }
            for i, j in enumerate(jobs)
        },
        "jobs": jobs,
        "set": {
            "stp": stp,
            "stp_interval": [stp - 0.05, stp + 0.05],
            "antt": antt,
            "antt_interval": [antt - 0.1, antt + 0.1],
            "fairness": fairness,
            "aggregate_samples_per_s": 1000.0 * stp,
            "best_isolated_samples_per_s": 1000.0,
            "aggregate_vs_best_isolated": stp,
        },
        "conclusion": f"sharing raised total throughput {stp:.2f}x while the slowest job ran "
        f"at {fairness:.2f} of its isolated speed",
    }


@pytest.fixture
def partition():
    """Three jobs, one failed: NP 0.5 and 0.75 -> STP 1.25, ANTT (2 + 4/3) / 2, fairness 2/3."""
    jobs = [
        job("stocks#1", [0.45, 0.55]),
        job("digits#1", [0.7, 0.8]),
        job("stocks#2", None, error="RuntimeError: CUDA out of memory"),
    ]
    return share_results("partition", jobs, 1.25, 5 / 3, 2 / 3)


@pytest.fixture
def timeslice():
    jobs = [job("stocks#1", [0.6, 0.6]), job("digits#1", [0.6, 0.6]), job("stocks#2", [0.5, 0.5])]
    return share_results("timeslice", jobs, 1.7, 1.8, 5 / 6)


@pytest.fixture
def modes(timeslice, partition):
    """The same jobs under timeslice and partition, as `gpulab share --mode timeslice,partition`
    writes them."""
    return {
        "kind": "share-modes", "method_version": 1, "created_utc": "2026-12-03T15:30:00+00:00",
        "command": ["gpulab", "share", "2xstocks", "--mode", "timeslice,partition"],
        "device": "cpu", "device_name": "Intel(R) Xeon(R) Processor",
        "modes": ["timeslice", "partition"], "repeats": 2,
        "by_mode": {"timeslice": timeslice, "partition": partition},
        "conclusion": "timeslice gave the highest total throughput (STP 1.70, against 1.25 "
        "under partition); the slowest job kept 0.50 (timeslice) and 0.50 (partition) of its "
        "isolated speed",
    }  # fmt: skip


# -- the report -------------------------------------------------------------------------------------


def test_report_files_are_written_and_the_chart_decodes(tmp_path, partition):
    paths = write_reports(tmp_path, partition)
    assert [p.name for p in paths] == ["report.md", "report.html", "np_per_job.png"]
    assert all(p.is_file() for p in paths)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp file behind
    with Image.open(tmp_path / "np_per_job.png") as im:
        assert im.format == "PNG" and im.size[0] > 400


def test_html_is_self_contained_and_shows_the_figures(tmp_path, partition):
    write_reports(tmp_path, partition)
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert "<script" not in page and "<link" not in page
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    with Image.open(io.BytesIO(base64.b64decode(png))) as im:
        im.verify()
    assert partition["conclusion"] in page
    assert "<td>stocks#1</td>" in page and "<td>0.50 [0.45-0.55]</td>" in page
    assert "<td>0.75 [0.70-0.80]</td>" in page
    assert "<td>STP (sum of NP)</td><td>1.25 [1.20-1.30]</td>" in page
    assert "<td>ANTT (mean 1/NP)</td><td>1.67 [1.57-1.77]</td>" in page
    assert "<td>fairness (min NP / max NP)</td><td>0.67</td>" in page
    assert "stocks#2: RuntimeError: CUDA out of memory" in page
    assert "MIG-1" in page and "common barrier." in page and "How to read this" in page


def test_markdown_has_the_tables_placement_warmup_and_failures(tmp_path, timeslice, partition):
    write_reports(tmp_path, partition)
    md = (tmp_path / "report.md").read_text()
    assert "| digits#1 | digits | 1,000 | 750 | 3.35 s | 0.75 [0.70-0.80] | 300 MiB | ok |" in md
    assert "| stocks#2 | 2 | 1 | MIG-2 |  |" in md
    assert "- stocks#2: RuntimeError: CUDA out of memory" in md
    assert f"**{partition['conclusion']}**" in md and f"Warm-up: {WARMUP}." in md
    write_reports(tmp_path, timeslice)
    md = (tmp_path / "report.md").read_text()
    assert "| stocks#1 | all | 1 |  |  |" in md and "No job failed." in md


def test_chart_marks_a_failed_job_and_the_lines(monkeypatch, partition):
    """The chart draws a bar per job that ran, the word failed for the other, NP = 1 and 1/N."""
    from matplotlib.axes import Axes

    from gpulab.share import report

    seen = {"bars": [], "lines": [], "texts": []}
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, **kw: seen["bars"].append((x, h)))
    real_line, real_text = Axes.axhline, Axes.text
    monkeypatch.setattr(
        Axes, "axhline", lambda self, y, **kw: seen["lines"].append(y) or real_line(self, y, **kw)
    )
    monkeypatch.setattr(
        Axes,
        "text",
        lambda self, x, y, s, **kw: seen["texts"].append(s) or real_text(self, x, y, s),
    )
    report.chart(partition)
    assert seen["bars"] == [(0, 0.5), (1, 0.75)]
    assert seen["lines"] == [1.0, pytest.approx(1 / 3)]
    assert "failed" in seen["texts"]


def test_several_modes_are_reported_side_by_side_and_each_on_its_own(tmp_path, modes):
    paths = write_reports(tmp_path, modes)
    assert [str(p.relative_to(tmp_path)) for p in paths] == [
        "report.md", "report.html", "np_per_job.png",
        *[f"{m}/{n}" for m in ("timeslice", "partition") for n in ("report.md", "report.html", "np_per_job.png")],
    ]  # fmt: skip
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# gpulab share: modes side by side")
    assert "| figure | timeslice | partition |" in md
    assert "| STP (sum of NP) | 1.70 [1.65-1.75] | 1.25 [1.20-1.30] |" in md
    assert "| fairness (min NP / max NP) | 0.83 | 0.67 |" in md
    assert "| stocks#1 | 0.60 [0.60-0.60] | 0.50 [0.45-0.55] |" in md
    assert "| stocks#2 | 0.50 [0.50-0.50] | failed |" in md
    assert f"**{modes['conclusion']}**" in md and "## timeslice" in md and "## partition" in md
    assert "- stocks#2: RuntimeError: CUDA out of memory" in md
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page) and "<script" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 1
    assert "<td>STP (sum of NP)</td><td>1.70 [1.65-1.75]</td><td>1.25 [1.20-1.30]</td>" in page
    assert 'id="jobs-timeslice"' in page and 'id="jobs-partition"' in page
    own = (tmp_path / "partition" / "report.md").read_text()
    assert own.startswith("# gpulab share\n") and modes["by_mode"]["partition"]["conclusion"] in own


def test_the_modes_chart_puts_each_modes_bar_side_by_side(monkeypatch, modes):
    from matplotlib.axes import Axes

    from gpulab.share import report

    bars = []
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, **kw: bars.append((x, h, kw["label"])))
    report.chart(modes)
    assert bars == [  # timeslice left of each job's tick, partition right; stocks#2 failed there
        (pytest.approx(-0.2), 0.6, "timeslice"), (pytest.approx(0.8), 0.6, None),
        (pytest.approx(1.8), 0.5, None), (pytest.approx(0.2), 0.5, "partition"),
        (pytest.approx(1.2), 0.75, None),
    ]  # fmt: skip


# -- compare ----------------------------------------------------------------------------------------


def _write(path, doc):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(doc))
    return path


def test_compare_two_share_results_gives_np_ratios_and_set_figures(tmp_path, partition, timeslice):
    a = load_any(_write(tmp_path / "a", timeslice))
    b = load_any(_write(tmp_path / "b", partition))
    jobs, figures = compare_share(a, b)
    by_id = {r["job"]: r for r in jobs}
    assert by_id["stocks#1"]["ratio"] == pytest.approx(0.5 / 0.6)
    assert by_id["digits#1"]["ratio"] == pytest.approx(0.75 / 0.6)
    assert by_id["stocks#2"]["ratio"] is None and by_id["stocks#2"]["note"] == "failed in B"
    fig = {r["figure"]: r for r in figures}
    assert fig["STP"]["ratio"] == pytest.approx(1.25 / 1.7)
    assert fig["ANTT"]["ratio"] == pytest.approx((5 / 3) / 1.8)
    assert fig["fairness"]["ratio"] == pytest.approx((2 / 3) / (5 / 6))


def test_report_compare_of_share_results_through_the_cli(run_cli, tmp_path, partition, timeslice):
    a = _write(tmp_path / "a", timeslice)
    b = _write(tmp_path / "b", partition)
    r = run_cli("report", "compare", a, b / "results.json", "--out", tmp_path / "c.md")
    assert r.code == 0, r.err
    assert "| stocks#1 | 0.60 | 0.50 | 0.83 |" in r.out
    assert "| digits#1 | 0.60 | 0.75 | 1.25 |" in r.out
    assert "| STP | 1.70 | 1.25 | 0.74 |" in r.out
    assert "timeslice" in r.out and "partition" in r.out
    assert (tmp_path / "c.md").read_text() == r.out


def test_report_compare_refuses_a_bench_result_beside_a_share_result(run_cli, tmp_path, partition):
    share = _write(tmp_path / "share", partition)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"method_version": 2, "rows": []}))
    for args in ((bench, share), (share, bench)):
        r = run_cli("report", "compare", *args)
        assert r.code == 2 and "mix bench and share results" in r.err
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_report_compare_refuses_share_results_of_other_methods(run_cli, tmp_path, partition):
    a = _write(tmp_path / "a", partition)
    b = _write(tmp_path / "b", {**partition, "method_version": 99})
    r = run_cli("report", "compare", a, b)
    assert r.code == 2 and "method_version" in r.err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text('{"kind": "share", "method_version": 1}')
    r = run_cli("report", "compare", a, tmp_path / "c")
    assert r.code == 2 and "is not a gpulab share result" in r.err
    (tmp_path / "c" / "results.json").write_text(json.dumps({**partition, "jobs": [{"np": 1}]}))
    r = run_cli("report", "compare", a, tmp_path / "c")
    assert r.code == 2 and "is not a gpulab share result" in r.err and "Traceback" not in r.err


def test_report_compare_takes_two_share_results_not_three(run_cli, tmp_path, partition):
    folders = [_write(tmp_path / n, partition) for n in ("a", "b", "c")]
    r = run_cli("report", "compare", *folders)
    assert r.code == 2 and "takes two share results" in r.err


def test_report_compare_points_a_modes_result_to_one_modes_folder(run_cli, tmp_path, modes):
    both = _write(tmp_path / "both", modes)
    r = run_cli("report", "compare", both, _write(tmp_path / "one", modes["by_mode"]["timeslice"]))
    assert r.code == 2 and "holds several modes side by side" in r.err
    assert f"pass its folder, e.g. {both / 'timeslice'}" in r.err


# -- the web listing --------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path, partition, timeslice):
    """A runs root with two share reports (timeslice older, partition newer) and three folders
    that are not share reports the server could serve."""
    runs = tmp_path / "runs"
    for stamp, doc in (("20261203T150000Z", timeslice), ("20261203T160000Z", partition)):
        folder = runs / "share" / stamp
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(doc))
        write_reports(folder, doc)
    (runs / "share" / "20261203T170000Z").mkdir()
    (runs / "share" / "20261203T170000Z" / "results.json").write_text("{half")
    (runs / "share" / "20261203T180000Z").mkdir()
    (runs / "share" / "20261203T180000Z" / "results.json").write_text('{"rows": []}')  # a bench
    (runs / "share" / "latest").mkdir()  # not a stamp the file guard would serve
    (runs / "share" / "latest" / "results.json").write_text(json.dumps(partition))
    return runs


@pytest.fixture
def client(served):
    from fastapi.testclient import TestClient

    from gpulab.web.app import create_app

    with TestClient(create_app(served / "web", served, "cpu")) as c:
        yield c


def test_the_api_lists_share_reports_newest_first(client, partition):
    reports = client.get("/api/reports/share").json()
    assert [r["id"] for r in reports] == ["20261203T160000Z", "20261203T150000Z"]
    latest = reports[0]
    assert latest["mode"] == "partition" and latest["conclusion"] == partition["conclusion"]
    (only,) = latest["modes"]
    assert only["mode"] == "partition" and only["set"]["stp"] == 1.25
    assert [j["np_mean"] for j in only["jobs"]] == [0.5, 0.75, None]
    assert only["jobs"][2]["error"] == "RuntimeError: CUDA out of memory"
    page = client.get(latest["html"])
    assert page.status_code == 200 and partition["conclusion"] in page.text
    chart = client.get(latest["chart"])
    assert chart.headers["content-type"] == "image/png" and chart.content[:4] == b"\x89PNG"
    assert client.get("/files/share/20261203T160000Z/results.json").status_code == 404
    assert client.get("/files/share/..%2F..%2Fweb/report.html").status_code == 404


def test_the_api_lists_a_report_of_several_modes_with_each_modes_figures(client, served, modes):
    folder = served / "share" / "20261203T190000Z"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(modes))
    write_reports(folder, modes)
    latest = client.get("/api/reports/share").json()[0]
    assert latest["id"] == "20261203T190000Z" and latest["mode"] == "timeslice, partition"
    assert [(m["mode"], m["set"]["stp"]) for m in latest["modes"]] == [
        ("timeslice", 1.7), ("partition", 1.25),
    ]  # fmt: skip
    assert [j["np_mean"] for j in latest["modes"][1]["jobs"]] == [0.5, 0.75, None]
    assert client.get(latest["chart"]).content[:4] == b"\x89PNG"
    assert "modes side by side" in client.get(latest["html"]).text


def test_the_api_answers_an_empty_list_without_share_reports(tmp_path):
    from fastapi.testclient import TestClient

    from gpulab.web.app import create_app

    with TestClient(create_app(tmp_path / "web", tmp_path, "cpu")) as c:
        assert c.get("/api/reports/share").json() == []


def test_browser_shows_the_latest_share_report_on_the_runs_page(served, browser, tmp_path, modes):
    import os
    import threading
    import time

    import uvicorn

    from gpulab.web.app import create_app

    config = uvicorn.Config(create_app(served / "web", served, "cpu"), port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/runs")
    page.wait_for_function("document.getElementById('share-chart')?.naturalWidth > 0")
    assert "raised total throughput 1.25x" in page.locator("#share-conclusion").inner_text()
    assert "failed: RuntimeError: CUDA out of memory" in page.locator("#share").inner_text()
    assert "Earlier share reports" in page.locator("#share").inner_text()
    shots = Path(os.environ.get("GPULAB_SCREENSHOTS", tmp_path))  # as in test_web.py
    page.screenshot(path=str(shots / "web_runs_share.png"), full_page=True)
    folder = served / "share" / "20261203T190000Z"  # a newer report of two modes
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(modes))
    write_reports(folder, modes)
    page.reload()
    page.wait_for_function("document.getElementById('share-chart')?.naturalWidth > 0")
    text = page.locator("#share").inner_text()
    assert "timeslice: STP 1.70" in text and "partition: STP 1.25" in text
    assert "NP timeslice [95% interval]" in text and "failed: RuntimeError" in text
    page.goto(f"http://127.0.0.1:{port}/files/share/20261203T160000Z/report.html")
    page.screenshot(path=str(shots / "share_report.png"), full_page=True)
    page.close()
    srv.should_exit = True
    thread.join(timeout=10)
