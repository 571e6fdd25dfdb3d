"""gpulab serve: the API (every endpoint and error), the job queue, a real browser driving the
style page, and a bounded load test on loopback."""

import io
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gpulab.web.app import create_app
from gpulab.web.jobs import Cancelled, JobQueue, QueueFull
from helpers import free_port

TINY = {"content_weight": "1", "style_weight": "5", "size": "64", "steps": "3"}


def png_bytes(size=(40, 30), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def client(tmp_path):
    app = create_app(tmp_path / "runs" / "web", tmp_path / "runs", "cpu", max_upload_mb=1)
    with TestClient(app) as c:
        yield c


def wait(client, job_id, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


# -- the job queue ----------------------------------------------------------------------------------


def test_queue_runs_jobs_reports_progress_cancels_and_refuses_when_full():
    q = JobQueue(workers=1, max_pending=1)
    gate = threading.Event()

    def blocked(job):
        while not gate.is_set():
            job.report(0.5, "waiting")
            time.sleep(0.01)
        return {"ok": True}

    first = q.submit("t", blocked)
    while first.status != "running":
        time.sleep(0.01)
    second = q.submit("t", lambda job: {"n": 2})
    with pytest.raises(QueueFull):
        q.submit("t", lambda job: {})
    assert q.cancel(second.id).status == "cancelled"  # never started
    q.cancel(first.id)
    while first.status == "running":
        time.sleep(0.01)
    assert first.status == "cancelled" and first.progress == 0.5
    third = q.submit("t", lambda job: {"n": 3})
    while third.status != "done":
        time.sleep(0.01)
    assert third.result == {"n": 3} and third.progress == 1.0
    failing = q.submit("t", lambda job: 1 / 0)
    while failing.finished is None:
        time.sleep(0.01)
    assert failing.status == "failed" and "ZeroDivisionError" in failing.error
    gate.set()


def test_cancelled_job_raises_inside_its_work():
    q = JobQueue()
    job = q.submit("t", lambda job: {})
    job.cancel_requested.set()
    with pytest.raises(Cancelled):
        job.report(0.1)


# -- the API ----------------------------------------------------------------------------------------


def test_style_job_on_embedded_images_end_to_end(client):
    r = client.post("/api/style", data=TINY)
    assert r.status_code == 202 and r.json()["status_url"] == f"/api/jobs/{r.json()['id']}"
    job = wait(client, r.json()["id"])
    assert job["status"] == "done" and job["progress"] == 1.0, job
    res = job["result"]
    img = client.get(res["image"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(img.content)).size == (64, 43)  # china.jpg's aspect
    assert res["pretrained"] is False and res["run"].startswith("style/")
    assert client.get("/api/gallery").json()[0]["image"] == res["image"]
    runs = client.get("/api/runs").json()
    assert runs[0]["id"] == res["run"] and runs[0]["plots"] and runs[0]["mode"] == "optimize"
    assert client.get(runs[0]["plots"][0]).status_code == 200
    r = client.post("/api/style", data={"mode": "model", "model_run": res["run"]})
    assert r.status_code == 400 and "not a trained style network" in r.json()["error"]


def test_style_job_on_uploads_and_its_events(client):
    files = {"content": ("c.bin", png_bytes((48, 64)), "application/octet-stream"),
             "style": ("s.jpg", png_bytes((30, 30), "blue"), "image/jpeg")}  # fmt: skip
    r = client.post("/api/style", data=TINY, files=files)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    with client.stream("GET", f"/api/jobs/{job_id}/events") as events:
        states = [json.loads(line[6:]) for line in events.iter_lines() if line.startswith("data: ")]
    assert states[-1]["status"] == "done" and states[-1]["result"]["image"]
    out = Image.open(io.BytesIO(client.get(states[-1]["result"]["image"]).content))
    assert out.size == (48, 64)


@pytest.mark.parametrize(
    ("fields", "files", "status", "message"),
    [
        ({"content_weight": "3"}, None, 422, "content-weight must lie in 0..2"),
        ({"style_weight": "11"}, None, 422, "style-weight must lie in 0..10"),
        ({"content_weight": "0", "style_weight": "0"}, None, 422, "both 0"),
        ({"size": "big"}, None, 400, "must be numbers"),
        ({"mode": "magic"}, None, 400, "mode must be optimize or model"),
        ({"mode": "model", "model_run": "style/nope"}, None, 404, "unknown style run"),
        ({"mode": "model", "model_run": "../../etc"}, None, 404, "unknown style run"),
        ({"content_name": "moon"}, None, 400, "unknown embedded content image 'moon'"),
        ({}, {"content": ("x.jpg", b"this is text", "image/jpeg")}, 400, "not an image file"),
        ({}, {"content": ("x.png", png_bytes()[:60], "image/png")}, 400, "truncated"),
        ({}, {"content": ("x.png", b"", "image/png")}, 400, "the upload is empty"),
        ({}, {"style": ("x.png", b"\\x89PNG" + b"0" * 1_300_000, "image/png")}, 413, "too large"),
    ],
)
def test_bad_style_requests(client, fields, files, status, message):
    r = client.post("/api/style", data={**TINY, **fields}, files=files)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert client.get("/api/health").status_code == 200  # the server keeps serving


def test_oversize_body_is_refused_before_reading(client):
    r = client.post(
        "/api/style",
        content=b"x" * (3 * 2**20),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 413 and "the limit is 1 MB" in r.json()["error"]


def test_unknown_jobs_and_files(client):
    assert client.get("/api/jobs/" + "0" * 32).status_code == 404
    assert client.delete("/api/jobs/nope").status_code == 404
    assert "no job" in client.get("/api/jobs/nope").json()["error"]
    assert client.get("/results/" + "0" * 32 + "/result.png").status_code == 404
    assert client.get("/results/..%2F..%2Fx/result.png").status_code == 404
    assert client.get("/files/runs/style/x/../../../etc/passwd").status_code == 404
    assert client.get("/files/reports/20260101T000000Z/secret.txt").status_code == 404
    assert client.get("/api/reports/latest").status_code == 404


def test_cancel_a_running_style_job(client):
    r = client.post("/api/style", data={**TINY, "steps": "2000"})
    job_id = r.json()["id"]
    while client.get(f"/api/jobs/{job_id}").json()["progress"] == 0:
        time.sleep(0.05)
    assert client.delete(f"/api/jobs/{job_id}").status_code == 200
    assert wait(client, job_id)["status"] == "cancelled"
    assert not (client.app.state.web.jobs.get(job_id).result)


def test_full_queue_answers_429_with_retry_after(tmp_path):
    app = create_app(tmp_path / "web", tmp_path, "cpu", max_pending=0)
    with TestClient(app) as c:
        r = c.post("/api/style", data=TINY)
        assert r.status_code == 429 and r.headers["retry-after"] == "5"
        assert "queue is full" in r.json()["error"]
        assert not [p for p in (tmp_path / "web").iterdir() if p.name != "embedded"]


def test_caption_job_and_its_errors(client, tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.caption.workload import caption_images
    from gpulab.workloads.registry import get_workload

    cfg = get_workload("caption").config("debug")
    run = train("caption", cfg, TrainOptions(device="cpu", out=tmp_path / "runs", quiet=True))
    run_id = f"caption/{run.run_dir.name}"
    files = {"image": ("scene.png", png_bytes((32, 32), "green"), "image/png")}
    r = client.post("/api/caption", data={"run": run_id, "beam": "2"}, files=files)
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "done" and job["result"]["beam"] == 2, job
    (tmp_path / "scene.png").write_bytes(png_bytes((32, 32), "green"))
    (expected,) = caption_images([tmp_path / "scene.png"], run.run_dir, beam=2, device="cpu")
    assert job["result"]["caption"] == expected["caption"]
    assert job["result"]["logprob"] == pytest.approx(expected["logprob"], abs=1e-5)
    assert client.post("/api/caption", data={"run": "caption/nope"}, files=files).status_code == 404
    bad = client.post("/api/caption", data={"run": run_id, "beam": "0"}, files=files)
    assert bad.status_code == 422 and "beam must lie in 1..20" in bad.json()["error"]
    assert client.post("/api/caption", data={"run": run_id}).status_code == 400


def test_latest_report(client, tmp_path):
    bench = tmp_path / "runs" / "bench" / "20261123T000000Z"
    bench.mkdir(parents=True)
    (bench / "results.json").write_text(
        json.dumps(
            {"created_utc": "x", "mode": "quick", "rows": [], "probe": {"verdict": ["fast"]}}
        )
    )
    (bench / "report.html").write_text("<html>report</html>")
    r = client.get("/api/reports/latest").json()
    assert r["probe"] == ["fast"] and r["html"].endswith("/report.html")
    assert client.get(r["html"]).text == "<html>report</html>"
    assert client.get("/runs").status_code == 200 and client.get("/caption").status_code == 200


def test_token_is_required_when_set(tmp_path):
    app = create_app(tmp_path / "web", tmp_path, "cpu", token="s3cret")
    with TestClient(app) as c:
        assert c.get("/api/embedded").status_code == 401
        assert c.get("/api/embedded", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = c.get("/?token=s3cret")
        assert page.status_code == 200 and "gpulab_token" in page.headers["set-cookie"]


def test_pages_load_their_styles_and_scripts_also_behind_a_token(tmp_path):
    app = create_app(tmp_path / "web", tmp_path, "cpu", token="s3cret")
    with TestClient(app) as c:
        assert c.get("/static/common.js").status_code == 401
        for path, name in (("/", "Style"), ("/caption", "Captions"), ("/runs", "Runs and reports")):
            html = c.get(path + "?token=s3cret").text  # the cookie it sets opens the rest
            assert f'<a href="{path}" class="here">{name}</a>' in html
            assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
            assert len(assets) == 3, assets  # the styles, the common script, the page's script
            for asset in assets:
                r = c.get(asset)
                assert r.status_code == 200 and len(r.text) > 100, asset


def test_serve_refuses_other_hosts_without_a_token(run_cli, tmp_path):
    r = run_cli("serve", "--host", "0.0.0.0", "--out", tmp_path)
    assert r.code == 2 and "pass --token" in r.err


# -- a real server on loopback: the browser, and load -----------------------------------------------


@pytest.fixture
def server(tmp_path):
    import uvicorn

    port = free_port()
    app = create_app(tmp_path / "runs" / "web", tmp_path / "runs", "cpu", max_pending=16)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_browser_restyles_a_photo_with_the_sliders(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(server + "/")
    for slider, value in (("#content_weight", "1.5"), ("#style_weight", "8")):
        page.locator(slider).fill(value)  # a range input takes fill() and fires input
    assert page.locator("#content_weight_value").inner_text() == "1.5"
    assert page.locator("#style_weight_value").inner_text() == "8.0"
    page.locator("#size").fill("64")
    page.locator("#steps").fill("3")
    page.locator("#submit").click()
    page.wait_for_function(
        "document.getElementById('result').complete && document.getElementById('result').naturalWidth > 0",
        timeout=60_000,
    )
    assert page.locator("#download").is_visible()
    href = page.locator("#download").get_attribute("href")
    download = page.request.get(server + href)
    assert download.ok and download.body()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "done in" in page.locator("#status").inner_text()
    page.wait_for_selector("#gallery img")
    # GPULAB_SCREENSHOTS=docs/images keeps the screenshot the README shows
    shot = Path(os.environ.get("GPULAB_SCREENSHOTS", tmp_path)) / "web_style_page.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert shot.stat().st_size > 20_000


def test_load_on_loopback_loses_no_request_and_no_job(server):
    def call(method, path, data=None):
        body, headers = None, {}
        if data is not None:
            boundary = "gpulabboundary"
            parts = [
                f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                for k, v in data.items()
            ]
            body = ("".join(parts) + f"--{boundary}--\r\n").encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        try:
            with urlopen(Request(server + path, body, headers, method=method), timeout=30) as r:
                return r.status, json.loads(r.read())
        except HTTPError as e:
            return e.code, json.loads(e.read())

    with ThreadPoolExecutor(max_workers=8) as pool:
        submitted = list(pool.map(lambda _: call("POST", "/api/style", TINY), range(5)))
        assert [s for s, _ in submitted] == [202] * 5
        ids = [body["id"] for _, body in submitted]
        statuses = list(pool.map(lambda k: call("GET", f"/api/jobs/{ids[k % 5]}"), range(50)))
        assert all(s == 200 for s, _ in statuses)
    end = time.time() + 120
    while time.time() < end:
        states = [call("GET", f"/api/jobs/{i}")[1]["status"] for i in ids]
        if all(s in ("done", "failed", "cancelled") for s in states):
            break
        time.sleep(0.3)
    assert states == ["done"] * 5


def test_embedded_images_are_served(client):
    r = client.get("/api/embedded/painting")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (512, 512)
    assert client.get("/api/embedded/china").status_code == 200
    assert client.get("/api/embedded/moon").status_code == 404


def test_a_decompression_bomb_upload_is_refused(client):
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")  # 64 million pixels in a few kB
    files = {"content": ("bomb.png", buf.getvalue(), "image/png")}
    r = client.post("/api/style", data=TINY, files=files)
    assert r.status_code == 400 and "over the limit of 50,000,000" in r.json()["error"]


def test_a_trained_style_network_from_the_run_list(client, tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.registry import get_workload

    cfg = get_workload("style").config("debug")
    run = train("style", cfg, TrainOptions(device="cpu", out=tmp_path / "runs", quiet=True))
    run_id = f"style/{run.run_dir.name}"
    assert run_id in [r["id"] for r in client.get("/api/runs").json()]
    r = client.post("/api/style", data={"mode": "model", "model_run": run_id})
    assert r.status_code == 202, r.text
    job = wait(client, r.json()["id"])
    assert job["status"] == "done" and job["result"]["run"] == run_id
    out = Image.open(io.BytesIO(client.get(job["result"]["image"]).content))
    assert out.size == (640, 427)  # the network keeps the photo's own size


def test_browser_captions_an_uploaded_image(server, browser, tmp_path):
    from gpulab.train import TrainOptions, train
    from gpulab.workloads.caption.workload import caption_images
    from gpulab.workloads.registry import get_workload

    cfg = get_workload("caption").config("debug")
    run = train("caption", cfg, TrainOptions(device="cpu", out=tmp_path / "runs", quiet=True))
    (tmp_path / "scene.png").write_bytes(png_bytes((32, 32), "blue"))
    page = browser.new_page()
    page.goto(server + "/caption")
    page.wait_for_function("document.getElementById('run').options.length === 1")
    page.locator("#image").set_input_files(str(tmp_path / "scene.png"))
    page.locator("#beam").fill("2")
    page.locator("#submit").click()
    page.wait_for_selector("#captions tbody tr", timeout=30_000)
    cells = page.locator("#captions tbody tr td")
    # the page shows what the library's own call gives for the same image, model and beam
    (expected,) = caption_images([tmp_path / "scene.png"], run.run_dir, beam=2, device="cpu")
    assert cells.nth(1).inner_text().strip() == expected["caption"].strip()
    assert float(cells.nth(2).inner_text()) == pytest.approx(expected["logprob"], abs=5e-4)
    page.close()


def test_serve_without_the_web_extra_says_how_to_get_it(run_cli, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    r = run_cli("serve", "--out", tmp_path)
    assert r.code == 2 and "pip install 'gpulab[web]'" in r.err
