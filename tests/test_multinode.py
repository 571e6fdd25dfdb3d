"""Two torchrun agents as two nodes (--nnodes 2, c10d rendezvous): each in its own Linux network
namespace joined by a veth pair when this runs as root with `ip netns` (as CI does), else both
on loopback. They train like one process on the same global batch, write one record, and a
worker that dies on one node is restarted by torchrun and resumes from the checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from gpulab.train import TrainOptions, train
from gpulab.workloads.registry import get_workload
from helpers import free_port

JOIN_TIMEOUT_S = 120  # the rendezvous waits this long for the other node (stated in the README)


@dataclass(frozen=True)
class Node:
    """How to start a process on one node: a command prefix, its address and its interface."""

    prefix: tuple[str, ...]
    addr: str
    ifname: str


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _make_namespaces(tag: str, subnet: str) -> list[Node]:
    names = [f"gl{tag}a", f"gl{tag}b"]
    links = [f"gl{tag}va", f"gl{tag}vb"]
    for ns in names:
        _sh("ip", "netns", "add", ns)
    _sh("ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1])
    nodes = []
    for i, (ns, link) in enumerate(zip(names, links)):
        addr = f"{subnet}.{i + 1}"
        _sh("ip", "link", "set", link, "netns", ns)
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", link)
        _sh("ip", "-n", ns, "link", "set", link, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        nodes.append(Node(("ip", "netns", "exec", ns), addr, link))
    return nodes


@pytest.fixture(scope="module")
def nodes():
    """Two nodes in two network namespaces where this process may make them, else loopback."""
    tag = str(os.getpid() % 10000)
    if os.geteuid() == 0 and shutil.which("ip"):
        try:
            made = _make_namespaces(tag, f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}")
        except subprocess.CalledProcessError:
            made = None
        if made:
            yield made
            for ns in (f"gl{tag}a", f"gl{tag}b"):  # the veth pair goes with its namespaces
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
            return
    yield [Node((), "127.0.0.1", "lo"), Node((), "127.0.0.1", "lo")]


def _agents(
    nodes, logs, port: int, run_id: str, args, max_restarts=0, env=None, join_s=JOIN_TIMEOUT_S
) -> list:
    """Start one torchrun agent per node (one worker each), wait for both; (exit code, stdout,
    stderr) of each (the output goes through files: a pipe could fill and stall an agent)."""
    procs, files = [], []
    for rank, node in enumerate(nodes):
        cmd = [
            *node.prefix, sys.executable, "-m", "torch.distributed.run",
            "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{nodes[0].addr}:{port}", "--rdzv-id", run_id,
            # In a namespace the machine's hostname does not resolve to the node's own address:
            # name it, and say which node hosts the rendezvous store.
            "--local-addr", node.addr,
            "--rdzv-conf", f"is_host={int(rank == 0)},join_timeout={join_s}",
            "--max-restarts", str(max_restarts), "-m", "gpulab", *map(str, args),
        ]  # fmt: skip
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": node.ifname}
        out, err = logs / f"{run_id}-node{rank}.out", logs / f"{run_id}-node{rank}.err"
        files.append((out, err))
        with open(out, "w") as o, open(err, "w") as e:
            procs.append(
                subprocess.Popen(
                    cmd,
                    env={**full_env, **(env or {})},
                    stdout=o,
                    stderr=e,
                    start_new_session=True,  # its own process group, to stop it whole
                )  # fmt: skip
            )
    try:
        codes = [p.wait(timeout=JOIN_TIMEOUT_S + 240) for p in procs]
        return [(c, o.read_text(), e.read_text()) for c, (o, e) in zip(codes, files)]
    finally:  # an agent stopped with SIGTERM stops its workers (each in its own session)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _only_run(folder):
    runs = [p for p in folder.iterdir() if p.is_dir()]  # beside it: the torchrun marker
    assert len(runs) == 1, runs
    return runs[0]


def test_two_nodes_train_as_one_process_does(nodes, tmp_path):
    args = ("train", "stocks", "--preset", "debug", "--device", "cpu", "--quiet")
    results = _agents(nodes, tmp_path, free_port(), "same", [*args, "--out", tmp_path / "two"])
    for code, _, err in results:
        assert code == 0, err[-2000:]
    assert sum(out.count("run: ") for _, out, _ in results) == 1  # rank 0 alone reports
    run = _only_run(tmp_path / "two" / "stocks")
    record = json.loads((run / "record.json").read_text())
    assert record["options"]["world_size"] == 2 and record["options"]["backend"] == "gloo"

    cfg = get_workload("stocks").config("debug")
    single = train("stocks", cfg, TrainOptions(device="cpu", out=tmp_path / "one", quiet=True))
    a = torch.load(single.run_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k


def test_a_worker_lost_on_one_node_is_restarted_and_resumes(nodes, tmp_path):
    # debug stocks: 1,600 training rows, global batch 64 -> 25 steps per epoch, 2 epochs, a
    # checkpoint after each; the last rank exits at step 30, in its first attempt only
    args = ("train", "stocks", "--preset", "debug", "--device", "cpu", "--quiet")
    results = _agents(
        nodes, tmp_path, free_port(), "lost", [*args, "--out", tmp_path / "runs"], max_restarts=1,
        env={"GPULAB_FAIL_AT_STEP": "30"},
    )  # fmt: skip
    for code, _, err in results:
        assert code == 0, err[-2000:]
    record = json.loads((_only_run(tmp_path / "runs" / "stocks") / "record.json").read_text())
    assert record["status"] == "complete" and record["position"]["global_step"] == 50
    assert record["options"]["resumed_from_step"] == 25  # the epoch-1 checkpoint


def test_a_node_that_never_arrives_ends_the_rendezvous_at_its_join_timeout(nodes, tmp_path):
    args = ("train", "stocks", "--preset", "debug", "--device", "cpu", "--quiet")
    ((code, _, err),) = _agents(  # one node of two: the other never comes
        nodes[:1], tmp_path, free_port(), "alone", [*args, "--out", tmp_path], join_s=5
    )
    assert code != 0 and "RendezvousTimeoutError" in err
    assert not (tmp_path / "stocks").exists()  # no worker started, no run folder


def test_a_job_resumes_the_run_its_rendezvous_id_left_unfinished(tmp_path, monkeypatch):
    from gpulab.runtime import records
    from gpulab.train import _torchrun_restart_dir

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # no round number: not asked
    assert _torchrun_restart_dir(tmp_path, "stocks") is None  # a first start
    single = train(
        "stocks", get_workload("stocks").config("debug"),
        TrainOptions(device="cpu", out=tmp_path, quiet=True, max_steps=3),
    )  # fmt: skip
    marker = records.torchrun_marker(tmp_path, "stocks")
    assert marker.read_text().strip() == str(single.run_dir)
    assert single.record.status != "complete"  # stopped at --max-steps: unfinished
    assert _torchrun_restart_dir(tmp_path, "stocks") == single.run_dir
    (single.run_dir / "record.json").unlink()  # workers that died leave no record
    assert _torchrun_restart_dir(tmp_path, "stocks") == single.run_dir
    done = train(
        "stocks", get_workload("stocks").config("debug"),
        TrainOptions(device="cpu", out=tmp_path / "other", quiet=True),
    )  # fmt: skip
    marker.write_text(f"{done.run_dir}\n")  # the same id, a run that finished: start afresh
    assert done.record.status == "complete"
    assert _torchrun_restart_dir(tmp_path, "stocks") is None
