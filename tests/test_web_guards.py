"""The web app's checks called directly, without a server: path guards (`..`, links out of the
folder, wrong workloads, bad names), upload checks (size, emptiness, decoding) and the request
checks of the middleware."""

import io

import pytest
from PIL import Image
from starlette.requests import Request

from gpulab.runtime.records import RunSummary
from gpulab.web import guards, inputs, middleware
from gpulab.web.errors import ApiError
from gpulab.web.jobs import JobQueue
from gpulab.web.run_view import is_stylize_result, run_json

JOB = "0123456789abcdef0123456789abcdef"


def png_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, "PNG")
    return buf.getvalue()


def refused(status: int, fn, *args) -> str:
    """Call fn(*args), expect an ApiError with `status`, return its message."""
    with pytest.raises(ApiError) as e:
        fn(*args)
    assert e.value.status == status, e.value.message
    return e.value.message


@pytest.fixture
def runs(tmp_path):
    """A runs root with one style run (record and plot), and a folder outside it that has both."""
    root = tmp_path / "runs"
    for folder in (root / "style" / "r1", tmp_path / "outside"):
        folder.mkdir(parents=True)
        (folder / "record.json").write_text("{}")
        (folder / "loss.png").write_bytes(png_bytes())
    return root


# -- run folders ------------------------------------------------------------------------------------


def test_run_dir_finds_a_run_of_its_workload(runs):
    assert guards.run_dir(runs, "style/r1", "style") == (runs / "style" / "r1").resolve()


def test_run_dir_refuses_another_workloads_run(runs):
    assert "unknown caption run 'style/r1'" in refused(
        404, guards.run_dir, runs, "style/r1", "caption"
    )


@pytest.mark.parametrize("run_id", ["", "style", "style/../../outside", "style/r1/..", "Style/r1"])
def test_run_dir_refuses_malformed_ids(runs, run_id):
    refused(404, guards.run_dir, runs, run_id, "style")


def test_run_dir_refuses_dot_dot_that_lands_on_a_record(runs):
    (runs / "record.json").write_text("{}")  # style/.. is the runs root itself
    refused(404, guards.run_dir, runs, "style/..", "style")


def test_run_dir_refuses_a_link_out_of_the_runs_root(runs, tmp_path):
    (runs / "style" / "away").symlink_to(tmp_path / "outside")
    refused(404, guards.run_dir, runs, "style/away", "style")


def test_run_dir_refuses_a_run_nested_deeper_than_workload_and_name(runs):
    (runs / "style" / "r1" / "inner").mkdir()
    (runs / "style" / "r1" / "inner" / "record.json").write_text("{}")
    refused(404, guards.run_dir, runs, "style/r1/inner", "style")


def test_run_dir_refuses_a_folder_without_a_record(runs):
    (runs / "style" / "empty").mkdir()
    refused(404, guards.run_dir, runs, "style/empty", "style")


# -- files ------------------------------------------------------------------------------------------


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "web" / JOB
    folder.mkdir(parents=True)
    (folder / "result.png").write_bytes(png_bytes())
    (folder / "meta.json").write_text("{}")
    return tmp_path / "web"


def test_result_file_serves_a_jobs_image(results):
    assert guards.result_file(results, JOB, "result.png") == results / JOB / "result.png"


@pytest.mark.parametrize(
    ("job_id", "name"),
    [
        (JOB, "meta.json"),  # not one of the images
        (JOB, "style.png"),  # allowed name, no such file
        ("..", "result.png"),
        (JOB.upper(), "result.png"),
    ],
)
def test_result_file_refuses_other_names(results, job_id, name):
    assert refused(404, guards.result_file, results, job_id, name) == "no such result"


def test_result_file_refuses_a_folder_not_named_like_a_job(results):
    (results / "embedded").mkdir()
    (results / "embedded" / "result.png").write_bytes(png_bytes())
    refused(404, guards.result_file, results, "embedded", "result.png")


def test_result_file_refuses_a_link_out_of_the_results(results, tmp_path):
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (results / JOB / "content.png").symlink_to(tmp_path / "secret.png")
    refused(404, guards.result_file, results, JOB, "content.png")


def test_run_file_serves_a_plot_and_refuses_the_rest(runs, tmp_path):
    assert (
        guards.run_file(runs, "style", "r1", "loss.png") == (runs / "style/r1/loss.png").resolve()
    )
    refused(404, guards.run_file, runs, "style", "r1", "record.json")  # not a PNG
    refused(404, guards.run_file, runs, "style", "..", "outside/loss.png")
    refused(404, guards.run_file, runs, "style", "r1", "missing.png")
    (runs / "style" / "r1" / "away.png").symlink_to(tmp_path / "outside" / "loss.png")
    refused(404, guards.run_file, runs, "style", "r1", "away.png")


@pytest.fixture
def bench(runs):
    folder = runs / "bench" / "20261123T000000Z"
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html></html>")
    (folder / "results.json").write_text("{}")
    return folder


def test_report_file_serves_the_report_with_its_media_type(runs, bench):
    path, media_type = guards.report_file(runs, bench.name, "report.html")
    assert path == bench / "report.html" and media_type == "text/html"


def test_report_file_refuses_other_files_stamps_and_links(runs, bench, tmp_path):
    refused(404, guards.report_file, runs, bench.name, "results.json")
    refused(404, guards.report_file, runs, bench.name, "report.md")  # not written
    refused(404, guards.report_file, runs, "..", "report.html")
    (runs / "bench" / "latest").mkdir()
    (runs / "bench" / "latest" / "report.html").write_text("<html></html>")
    refused(404, guards.report_file, runs, "latest", "report.html")  # not a bench stamp
    (tmp_path / "secret.md").write_text("secret")
    (bench / "report.md").symlink_to(tmp_path / "secret.md")
    refused(404, guards.report_file, runs, bench.name, "report.md")


@pytest.fixture
def share(runs):
    folder = runs / "share" / "20261203T153000Z"
    folder.mkdir(parents=True)
    for name in ("report.html", "report.md", "results.json"):
        (folder / name).write_text("share")
    (folder / "np_per_job.png").write_bytes(png_bytes())
    return folder


def test_report_file_serves_a_share_reports_files(runs, share):
    path, media_type = guards.report_file(runs, share.name, "np_per_job.png", "share")
    assert path == share / "np_per_job.png" and media_type == "image/png"
    path, media_type = guards.report_file(runs, share.name, "report.md", "share")
    assert path == share / "report.md" and media_type == "text/markdown"


def test_report_file_refuses_a_share_reports_other_names_and_ways_out(runs, share, tmp_path):
    refused(404, guards.report_file, runs, share.name, "results.json", "share")
    refused(404, guards.report_file, runs, share.name, "../np_per_job.png", "share")
    refused(404, guards.report_file, runs, "..", "report.html", "share")
    refused(404, guards.report_file, runs, f"{share.name}/..", "report.html", "share")
    refused(404, guards.report_file, runs, share.name, "np_per_job.png")  # a bench has no chart
    (runs / "bench" / share.name).mkdir(parents=True)
    (runs / "bench" / share.name / "np_per_job.png").write_bytes(png_bytes())
    refused(404, guards.report_file, runs, share.name, "np_per_job.png")  # nor served as one
    (tmp_path / "outside" / "report.html").write_text("secret")
    (runs / "share" / "20261203T160000Z").symlink_to(tmp_path / "outside")
    refused(404, guards.report_file, runs, "20261203T160000Z", "report.html", "share")


def test_find_job_refuses_unknown_and_malformed_ids():
    jobs = JobQueue(workers=1)
    job = jobs.submit("t", lambda job: {})
    assert guards.find_job(jobs, job.id) is job
    assert "job ids come from POST" in refused(404, guards.find_job, jobs, "0" * 32)
    jobs.jobs["../x"] = job  # a key the queue never makes: the id's form is checked first
    refused(404, guards.find_job, jobs, "../x")


# -- uploads ----------------------------------------------------------------------------------------


def test_check_upload_takes_up_to_the_limit_and_refuses_more():
    limit = inputs.upload_limit_bytes(0.5)
    assert limit == 2**19
    assert inputs.check_upload(b"x" * limit, "style", 0.5) == b"x" * limit
    message = refused(413, inputs.check_upload, b"x" * (limit + 1), "style", 0.5)
    assert message == "style: upload too large; the limit is 0.5 MB"


def test_check_upload_refuses_an_empty_upload():
    assert "the upload is empty" in refused(400, inputs.check_upload, b"", "content", 1)


def run_now(coroutine):
    """Run a coroutine whose awaits all finish at once, with no event loop (the browser tests
    keep one running in this thread)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited")


class FakeUpload:
    """An upload of `size` bytes that records how much was asked for."""

    def __init__(self, size: int):
        self.data, self.asked = b"x" * size, []

    async def read(self, n: int = -1) -> bytes:
        self.asked.append(n)
        return self.data if n < 0 else self.data[:n]


def test_read_upload_reads_one_byte_past_the_limit_at_most():
    upload = FakeUpload(10 * 2**20)
    with pytest.raises(ApiError) as e:
        run_now(inputs.read_upload(upload, "image", 1))
    assert e.value.status == 413 and upload.asked == [2**20 + 1]


def test_checked_image_keeps_a_decoded_png(tmp_path):
    path = inputs.checked_image(png_bytes((48, 64)), tmp_path, "content")
    assert path == tmp_path / "content.png" and Image.open(path).size == (48, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["content.png"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is text", "not an image file"),
        (png_bytes()[:60], "truncated"),
    ],
)
def test_checked_image_refuses_what_does_not_decode(tmp_path, data, message):
    text = refused(400, inputs.checked_image, data, tmp_path, "style")
    assert message in text and "the style upload" in text and str(tmp_path) not in text
    assert list(tmp_path.iterdir()) == []  # nothing kept, not even the raw upload


def test_checked_image_refuses_a_decompression_bomb(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")
    text = refused(400, inputs.checked_image, buf.getvalue(), tmp_path, "content")
    assert "over the limit of 50,000,000" in text


def test_embedded_image_refuses_a_name_of_the_other_role(tmp_path):
    text = refused(400, inputs.embedded_image, tmp_path, "painting", "content", tmp_path)
    assert text == "unknown embedded content image 'painting'; use one of china, flower"


# -- request checks ---------------------------------------------------------------------------------


def request(headers=(), query=b"") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers]
    return Request(
        {"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": query}
    )


def test_token_is_taken_from_header_query_or_cookie():
    assert middleware.given_token(request([("Authorization", "Bearer abc")])) == "abc"
    assert middleware.given_token(request(query=b"token=abc")) == "abc"
    assert middleware.given_token(request([("Cookie", "gpulab_token=abc")])) == "abc"
    assert middleware.given_token(request()) == ""


def test_token_ok_only_for_the_same_token():
    assert middleware.token_ok("", None) and middleware.token_ok("anything", None)
    assert middleware.token_ok("s3cret", "s3cret")
    assert not middleware.token_ok("", "s3cret") and not middleware.token_ok("s3cre", "s3cret")


def test_declared_body_size_over_the_limit_and_its_slack():
    one_mb = 2**20
    assert not middleware.declared_too_large(str(2 * one_mb), 1)  # form fields' slack
    assert middleware.declared_too_large(str(2 * one_mb + 1), 1)
    assert not middleware.declared_too_large(None, 1)
    assert not middleware.declared_too_large("lots", 1)


# -- what the runs API shows of a record ------------------------------------------------------------


def test_run_json_names_the_run_by_its_folder_and_lists_its_plots(runs):
    summary = RunSummary(runs / "style" / "r1", "style", "cpu", "2026", "ok", 12.5, "loss=1", None)
    assert run_json(summary, runs) == {
        "id": "style/r1",
        "workload": "style",
        "device": "cpu",
        "created_utc": "2026",
        "status": "ok",
        "samples_per_s": 12.5,
        "key_metric": "loss=1",
        "mode": None,
        "plots": ["/files/runs/style/r1/loss.png"],
    }


def test_a_stylize_result_is_told_from_a_trained_network_and_a_garbled_record_is_a_400(
    runs, write_record_json
):
    run = runs / "style" / "r1"
    write_record_json(run, "training_digits")
    assert not is_stylize_result(run)
    write_record_json(run, "stylize")
    assert is_stylize_result(run)
    (run / "record.json").write_text("{not json")
    assert "not a readable run record" in refused(400, is_stylize_result, run)
