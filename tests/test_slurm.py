"""deploy/slurm: the training and bench-array batch scripts, on a real one-machine Slurm and
under the environment Slurm gives them.

The cluster: slurmctld and slurmd (Debian's slurm-wlm) and munged, started by a fixture from a
slurm.conf, a munge key and state folders written into a temp folder, on free ports of
127.0.0.1, and stopped at the end; one node, `localhost`, 2 CPUs. `sbatch --wait` then runs
train.sbatch with two tasks on that node (two torchrun agents, one worker each, gloo on
loopback) and bench-array.sbatch as a two-task job array. These tests skip, saying so, where
the binaries are missing (`make slurm` installs them; `make test` does it on CI).

Without Slurm: each script runs under bash with the SLURM_* variables of a multi-node GPU job
and stand-ins for scontrol, srun, torchrun and gpulab that record their command lines: the
torchrun options are compared with the allocation, the gpulab command is parsed by gpulab's
own CLI (--help added, so nothing runs), and an allocation that does not match what torchrun
would be told is refused with the numbers.
"""

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "deploy" / "slurm"
TRAIN, BENCH = SLURM / "train.sbatch", SLURM / "bench-array.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "scontrol")
READY_S = 30  # the cluster answers within this, or the fixture fails with the daemons' logs


# -- the scripts under stand-ins ----------------------------------------------------------------


def gpu_job(nodes=("gpu1", "gpu2"), tasks_per_node=1, gpus=4, **extra) -> dict[str, str]:
    """The variables Slurm sets in the batch script of `--nodes N --ntasks-per-node T
    --gpus-per-node G` (nodes as scontrol expands SLURM_JOB_NODELIST)."""
    env = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": ",".join(nodes),
        "SLURM_NNODES": str(len(nodes)), "SLURM_NTASKS": str(len(nodes) * tasks_per_node),
        "SLURM_SUBMIT_DIR": "/shared/alice/gpulab", "SLURM_GPUS_ON_NODE": None if gpus is None else str(gpus),
    }  # fmt: skip
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """scontrol, srun, torchrun and gpulab stand-ins in a bin folder: srun runs its command
    once per task (SLURM_PROCID 0..SLURM_NTASKS-1) and each records its argv, NUL-separated, in
    calls/<name>[-<procid>]."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    record = f'printf "%s\\0" "$@" > "{calls}/$(basename "$0")${{SLURM_PROCID:+-$SLURM_PROCID}}"'
    scripts = {
        # the job's node list is written out in full by gpu_job: one name a line
        "scontrol": '[ "$1 $2" = "show hostnames" ] && echo "$3" | tr , "\\n"',
        "srun": f'{record}\nwhile [ "${{1#-}}" != "$1" ]; do shift; done\n'
        'for i in $(seq 0 $((SLURM_NTASKS - 1))); do SLURM_PROCID=$i "$@" || exit; done',
        "torchrun": record,
        "gpulab": record,
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir, calls


def run_script(script: Path, env: dict[str, str], args, tmp_path: Path):
    """Run a batch script under bash with only `env` (PATH, HOME added) and the stand-ins:
    (the finished process, {stand-in call: argv})."""
    bin_dir, calls = stand_ins(tmp_path)
    full_env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(
        ["bash", str(script), *args], env=full_env, capture_output=True, text=True, timeout=20
    )
    return r, {p.name: p.read_text().split("\0")[:-1] for p in calls.iterdir()}


def torchrun_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """torchrun's options (each takes a value) and the gpulab command after `-m gpulab`."""
    options, i = {}, 0
    while argv[i] != "-m":
        options[argv[i]] = argv[i + 1]
        i += 2
    assert argv[i + 1] == "gpulab", argv
    return options, argv[i + 2 :]


def accepted(run_cli, argv: list[str]) -> bool:
    """Whether gpulab's CLI parses `argv` (with --help added: nothing runs)."""
    r = run_cli(*argv, "--help")
    assert r.code == 0, f"gpulab {' '.join(argv)}: {r.err.strip()}"
    return True


def test_train_script_starts_one_torchrun_agent_per_node_on_every_gpu(run_cli, tmp_path):
    args = ["caption", "--device", "cuda"]
    r, calls = run_script(TRAIN, gpu_job(), args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(calls) == ["srun", "torchrun-0", "torchrun-1"]
    assert "--kill-on-bad-exit=1" in calls["srun"]  # a failed agent ends the whole step
    hosts = []
    for procid in (0, 1):
        options, gpulab_argv = torchrun_options(calls[f"torchrun-{procid}"])
        assert options["--nnodes"] == "2" and options["--nproc-per-node"] == "4"
        assert options["--rdzv-backend"] == "c10d" and options["--rdzv-id"] == "4242"
        assert options["--rdzv-endpoint"] == "gpu1:24242"  # the first node, a port per job id
        assert int(options["--max-restarts"]) > 0
        conf = dict(kv.split("=") for kv in options["--rdzv-conf"].split(","))
        hosts.append(conf["is_host"])
        assert int(conf["join_timeout"]) >= 60
        assert gpulab_argv[:4] == ["train", *args]
        assert gpulab_argv[gpulab_argv.index("--out") + 1] == "/shared/alice/gpulab/runs"
        assert accepted(run_cli, gpulab_argv)
    assert hosts == ["1", "0"]  # task 0, on the first node, hosts the rendezvous store
    assert "gpulab: 2 nodes x 4 workers, rendezvous gpu1:24242, id 4242" in r.stdout


def test_train_script_on_cpu_runs_one_worker_per_agent_into_the_given_out(run_cli, tmp_path):
    env = gpu_job(nodes=("n1",), tasks_per_node=2, gpus=None, GPULAB_OUT="/scratch/runs")
    r, calls = run_script(TRAIN, env, [], tmp_path)  # no arguments: caption
    assert r.returncode == 0, r.stderr
    options, gpulab_argv = torchrun_options(calls["torchrun-1"])
    assert (options["--nnodes"], options["--nproc-per-node"]) == ("2", "1")
    assert gpulab_argv[:2] == ["train", "caption"] and "/scratch/runs" in gpulab_argv
    assert accepted(run_cli, gpulab_argv)


MISMATCHES = [
    (
        {"NNODES": "3"},
        "torchrun --nnodes 3, but srun starts 2 agents (SLURM_NTASKS) on 2 nodes",
    ),
    (
        {"NPROC_PER_NODE": "8"},
        "torchrun --nproc-per-node 8, but each node has 4 GPUs (SLURM_GPUS_ON_NODE)",
    ),
    (
        {"SLURM_NNODES": "3"},
        "the node list names 2 nodes (gpu1,gpu2), SLURM_NNODES says 3",
    ),
    (
        {"SLURM_NTASKS": "4", "NNODES": "4"},
        "2 tasks per node would each start workers on the same 4 GPUs",
    ),
    (
        {"SLURM_NTASKS": "3", "NNODES": "3"},
        "3 tasks do not spread evenly over 2 nodes",
    ),
]


@pytest.mark.parametrize("change, message", MISMATCHES)
def test_an_allocation_torchrun_would_not_match_is_refused_with_the_numbers(
    change, message, tmp_path
):
    r, calls = run_script(TRAIN, gpu_job(**change), ["caption"], tmp_path)
    (line,) = r.stderr.strip().splitlines()  # one line
    assert r.returncode == 2 and line.startswith("gpulab train.sbatch: ") and message in line
    assert calls == {}  # nothing started


def test_bench_array_task_writes_its_own_folder_in_the_shared_one(run_cli, tmp_path):
    env = gpu_job(nodes=("gpu7",), SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_JOB_ID="900")
    r, calls = run_script(BENCH, {**env, "GPULAB_FLEET": str(tmp_path / "fleet")}, [], tmp_path)
    assert r.returncode == 0, r.stderr
    argv = calls["gpulab"]
    assert argv[:2] == ["bench", "--full"]  # no arguments: the full suite
    out = Path(argv[argv.index("--out") + 1])
    assert out == tmp_path / "fleet" / f"3-{socket.gethostname()}"
    assert (tmp_path / "fleet").is_dir()
    assert accepted(run_cli, argv)


@pytest.mark.parametrize("script", [TRAIN, BENCH])
def test_a_variable_slurm_does_not_set_stops_the_script(script, tmp_path):
    env = gpu_job(SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="1", SLURM_SUBMIT_DIR=None)
    r, calls = run_script(script, env, [], tmp_path)
    assert r.returncode != 0 and "SLURM_SUBMIT_DIR: unbound variable" in r.stderr
    assert calls == {}


# -- a real one-machine Slurm -------------------------------------------------------------------


def slurm_conf(d: Path) -> str:
    user = pwd.getpwuid(os.geteuid()).pw_name
    return f"""\
ClusterName=gpulabtest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
# sbatch --wait polls every 2 s while this is under 8 (else 8 s, then 32 s)
MinJobAge=4
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):  # slurmd, slurmctld, then munged
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_ready(procs, env, logs: Path) -> None:
    """Poll sinfo until the node is idle; fail with the daemons' logs at the deadline or when
    one exits."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        r = subprocess.run(
            ["sinfo", "-h", "-n", "localhost", "-o", "%t"],
            env=env, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if r.returncode == 0 and r.stdout.strip() == "idle":
            return
        time.sleep(0.2)
    tails = "\n".join(f"== {f.name}\n{f.read_text()[-1500:]}" for f in sorted(logs.iterdir()))
    pytest.fail(f"the one-machine Slurm did not come up within {READY_S} s:\n{tails}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node Slurm; the environment its clients (and jobs) need."""
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"needs slurm-wlm and munge (`make slurm` installs them): no {', '.join(missing)}"
        )
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o755)  # clients reach the socket
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = d / "slurm.conf"
    conf.write_text(slurm_conf(d))
    env = {
        **os.environ, "SLURM_CONF": str(conf), "OMP_NUM_THREADS": "1",
        # jobs run this checkout's gpulab, with this interpreter's torchrun
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    logs, procs = d / "log", []
    commands = [
        ["munged", "-F", "--force", f"--socket={d}/munge/munge.socket", f"--key-file={key}",
         f"--pid-file={d}/munge/munged.pid", f"--seed-file={d}/munge/seed",
         f"--log-file={logs}/munged.log"],
        ["slurmctld", "-D", "-f", str(conf)],
        ["slurmd", "-D", "-N", "localhost", "-f", str(conf)],
    ]  # fmt: skip
    try:
        for cmd in commands:
            with open(logs / f"{cmd[0]}.out", "w") as out:
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            if cmd[0] == "munged":  # slurmctld needs munge's socket from its first breath
                deadline = time.monotonic() + READY_S
                while not (d / "munge" / "munge.socket").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        _wait_ready(procs, env, logs)
        yield env
    finally:
        _stop(procs)


def sbatch(env, *args: str, timeout_s: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sbatch", "--wait", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


# the scripts ask for whole GPU nodes; on the test's node: no GPUs, one CPU a task, sharing
ON_THE_TEST_NODE = ("--gpus-per-node=0", "--cpus-per-task=1", "--oversubscribe")


def test_sbatch_trains_with_two_torchrun_agents_into_one_run(slurm, tmp_path):
    out = tmp_path / "shared" / "runs"
    r = sbatch(
        {**slurm, "GPULAB_OUT": str(out)}, *ON_THE_TEST_NODE, "--nodes=1", "--ntasks-per-node=2",
        f"--chdir={tmp_path}", f"--output={tmp_path}/slurm-%j.out",
        TRAIN, "stocks", "--preset", "debug", "--device", "cpu",
    )  # fmt: skip
    (log,) = tmp_path.glob("slurm-*.out")
    assert r.returncode == 0, log.read_text()[-3000:]
    job_id = log.name.removeprefix("slurm-").removesuffix(".out")
    text = log.read_text()
    assert f"gpulab: 2 nodes x 1 workers, rendezvous localhost:{20000 + int(job_id)}" in text
    assert text.count("run: ") == 1  # rank 0 alone reports
    (run,) = [p for p in (out / "stocks").iterdir() if p.is_dir()]
    record = json.loads((run / "record.json").read_text())
    assert record["status"] == "complete"
    assert record["options"]["world_size"] == 2 and record["options"]["backend"] == "gloo"


def test_sbatch_refuses_a_world_size_the_allocation_does_not_have(slurm, tmp_path):
    r = sbatch(
        {**slurm, "NNODES": "3", "GPULAB_OUT": str(tmp_path / "runs")}, *ON_THE_TEST_NODE,
        "--nodes=1", "--ntasks-per-node=2", f"--output={tmp_path}/slurm-%j.out",
        TRAIN, "stocks",
    )  # fmt: skip
    (log,) = tmp_path.glob("slurm-*.out")
    assert r.returncode == 2
    assert log.read_text().strip() == (
        "gpulab train.sbatch: torchrun --nnodes 3, but srun starts 2 agents (SLURM_NTASKS) on "
        "1 nodes: submit with --nodes 3 --ntasks-per-node 1, or drop NNODES"
    )
    assert not (tmp_path / "runs").exists()


def test_sbatch_bench_array_writes_one_folder_per_task_into_the_shared_one(slurm, tmp_path):
    fleet = tmp_path / "shared" / "fleet"
    r = sbatch(
        {**slurm, "GPULAB_FLEET": str(fleet)}, *ON_THE_TEST_NODE, "--array=0-1",
        f"--output={tmp_path}/slurm-%A_%a.out",
        BENCH, "stocks", "--quick", "--devices", "cpu", "--no-probe",
    )  # fmt: skip
    logs = sorted(tmp_path.glob("slurm-*.out"))
    assert r.returncode == 0, "\n".join(p.read_text()[-2000:] for p in logs)
    host = socket.gethostname()
    assert sorted(p.name for p in fleet.iterdir()) == [f"0-{host}", f"1-{host}"]
    for folder in fleet.iterdir():
        results = json.loads((folder / "results.json").read_text())
        rows = results["rows"]
        assert [(row["workload"], row["device"], row["failed"]) for row in rows] == [
            ("stocks", "cpu", [])
        ]
        assert rows[0]["samples_per_s"]["median"] > 0
