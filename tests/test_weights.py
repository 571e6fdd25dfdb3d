"""Pretrained weights on first use: fetched into torch's cache from a server on 127.0.0.1 with
the file's hash checked, reused from the cache, refused when corrupt, and never fetched offline;
every failure is one line and falls back to random weights."""

import hashlib
import http.server
import io
import threading
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from gpulab.runtime import pretrained


@dataclass(frozen=True)
class Weights:
    """What gpulab reads of a torchvision weights enum: its URL and name."""

    url: str
    name: str = "IMAGENET1K_V1"


def _state_bytes(seed: int) -> bytes:
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(nn.Linear(4, 2).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving `files` (name -> bytes); counts its requests."""
    files: dict[str, bytes] = {}
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server name
            requests.append(self.path)
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, files, requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def online(tmp_path, monkeypatch):
    """Fetching allowed, torch's cache in the test's folder, the once-only warning reset."""
    monkeypatch.delenv("GPULAB_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pretrained, "_warned", set())
    return tmp_path / "torch" / "hub" / "checkpoints"


def _served(files, base, seed=1, name="tiny"):
    body = _state_bytes(seed)
    file = f"{name}-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    files[file] = body
    return Weights(f"{base}/{file}"), body


def test_weights_are_fetched_once_checked_and_reused(server, online):
    base, files, requests = server
    weights, body = _served(files, base)
    model = nn.Linear(4, 2)
    assert pretrained.load_pretrained(model, "Tiny", weights, None, "--w") == (
        True, str(online / weights.url.rsplit("/", 1)[-1]),
    )  # fmt: skip
    assert (online / weights.url.rsplit("/", 1)[-1]).read_bytes() == body
    expected = torch.load(io.BytesIO(body), weights_only=True)
    assert torch.equal(model.weight, expected["weight"])
    again = nn.Linear(4, 2)
    assert pretrained.load_pretrained(again, "Tiny", weights, None, "--w")[0] is True
    assert len(requests) == 1  # the second model read the cached file


def test_a_file_that_does_not_match_its_hash_is_refused_and_removed(server, online, capsys):
    base, files, requests = server
    weights, _ = _served(files, base)
    files[weights.url.rsplit("/", 1)[-1]] = _state_bytes(2)  # the server's file changed
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    assert pretrained.load_pretrained(model, "Tiny", weights, None, "--w") == (
        False, "random initialisation",
    )  # fmt: skip
    assert torch.equal(model.weight, before) and not list(online.glob("*"))  # nothing half kept
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"gpulab: Tiny ImageNet weights could not be fetched from {weights.url}"
    )
    assert "invalid hash value" in err[-1] and "Pass --w PATH, or put the file at" in err[-1]


def test_a_server_that_is_down_or_lacks_the_file_is_one_line(server, online, capsys):
    base, files, requests = server
    missing = Weights(f"{base}/nothing-0123abcd.pth")
    assert pretrained.load_pretrained(nn.Linear(4, 2), "Tiny", missing, None, "--w")[0] is False
    assert "HTTP Error 404" in capsys.readouterr().err.strip().splitlines()[-1]
    pretrained._warned.clear()
    down = Weights("http://127.0.0.1:9/tiny-0123abcd.pth")  # the discard port: nobody listens
    assert pretrained.load_pretrained(nn.Linear(4, 2), "Tiny", down, None, "--w")[0] is False
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not be fetched from http://127.0.0.1:9/" in line and "refused" in line


def test_offline_nothing_is_fetched(server, online, monkeypatch, capsys):
    base, files, requests = server
    weights, _ = _served(files, base)
    monkeypatch.setenv("GPULAB_OFFLINE", "1")
    assert pretrained.load_pretrained(nn.Linear(4, 2), "Tiny", weights, None, "--w")[0] is False
    assert requests == [] and not online.exists()
    err = capsys.readouterr().err
    assert "Tiny ImageNet weights not in torch's cache" in err and "gpulab is offline" in err


def test_gpulab_offline_sets_it_for_the_command(run_cli, monkeypatch):
    monkeypatch.delenv("GPULAB_OFFLINE")
    import os

    r = run_cli("--offline", "workloads")
    assert r.code == 0 and os.environ.get("GPULAB_OFFLINE") == "1"
