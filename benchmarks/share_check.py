"""Share check: `gpulab share`'s NP/STP/ANTT against the same jobs started by hand.

For each job set and mode, in one run: (a) `gpulab share JOBS --mode M --repeats R` and its
results.json; (b) the same jobs as plain `python -m gpulab train` children, started by this
script without gpulab's share code: each distinct job alone (whole machine, the threads share
gives it), then all together (partition: each child pinned with os.sched_setaffinity to the cores
share used; timeslice: the same threads per job), R times. Each child's samples/s is read from
its record.json; NP = shared rate / isolated rate, STP = sum NP, ANTT = mean 1/NP are computed
here. The two sets of figures are printed side by side with share/by-hand ratios, which must
agree within the noise band measured in the same run (the spread of the isolated rates).

The by-hand "together" phase has no start barrier: the children are started so that their timed
steps begin at about the same moment (a child with a shorter setup, as measured alone, starts that
much later). The records' rates exclude setup and warm-up steps, so a few tenths of a second of
skew change the overlap, not what a step costs.

    PYTHONPATH=src python3 benchmarks/share_check.py [--sets "2xstocks:epochs=250" ...]
        [--modes timeslice,partition] [--repeats 2]
    PYTHONPATH=src python3 benchmarks/share_check.py --device cuda --preset default \
        --sets "cnn:model=resnet18,steps_per_epoch=150 stocks:epochs=2" --modes timeslice,mps

On CUDA, `mps` by hand starts its own MPS control daemon (`nvidia-cuda-mps-control -d`, pipe and
log folders of its own) and runs the children as its clients, with the thread percentage share
gave each job; timeslice runs them as plain processes on the GPU.

Prints a table, then one JSON object on its last line.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHOD_VERSION = 1
# each job a few seconds of timed steps on one core of the 2-core development machine
DEFAULT_SETS = ["2xstocks:epochs=250", "stocks:epochs=250 digits:epochs=2"]
COMMON = {"eval_every": "0"}  # no periodic evaluation: only steps share the machine


def gpulab(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpulab", *args]


def run_share(specs: list[str], mode: str, args, out: Path) -> dict:
    """(a) `gpulab share` itself; returns its results.json."""
    sets = [a for k, v in COMMON.items() for a in ("--set", f"{k}={v}")]
    cmd = gpulab("share", *specs, "--device", args.device, "--mode", mode, "--preset", args.preset,
                 *sets, "--repeats", str(args.repeats), "--out", str(out), "--quiet")  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"gpulab share failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "results.json").read_text())


def train_command(job: dict, threads: int | None, out: Path, args) -> list[str]:
    sets = {**COMMON, **job["settings"]}
    return gpulab(
        "train", job["workload"], "--preset", args.preset, "--device", args.device,
        *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
        *(["--threads", str(threads)] if threads else []),
        "--out", str(out), "--quiet", "--checkpoint-every", "0",
    )  # fmt: skip


def read_timing(out: Path) -> dict:
    """The one record under a child's runs root, as plain JSON."""
    (path,) = out.glob("*/*/record.json")
    return json.loads(path.read_text())["timing"]


def start_child(cmd: list[str], cpus: list[int] | None, env: dict) -> subprocess.Popen:
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=pin,
        env={**os.environ, **env},
    )  # fmt: skip


@contextlib.contextmanager
def mps_daemon(folder: Path):
    """An MPS control daemon of this script's own (not share's code): its pipe and log folders
    under `folder`; yields its clients' environment and always stops it."""
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}  # fmt: skip
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    control = ["nvidia-cuda-mps-control"]
    subprocess.run([*control, "-d"], env={**os.environ, **env}, check=True)
    try:
        yield env
    finally:
        subprocess.run(control, input="quit\n", text=True, env={**os.environ, **env}, check=False)


def run_children(cmds: list[list[str]], cpus: list, delays_s: list[float], envs: list) -> None:
    """Start the children (each after its delay from the first start) and wait for all."""
    order = sorted(range(len(cmds)), key=lambda i: delays_s[i])
    t0, procs = time.perf_counter(), []
    for i in order:
        time.sleep(max(0.0, t0 + delays_s[i] - time.perf_counter()))
        procs.append(start_child(cmds[i], cpus[i], envs[i]))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"gpulab train failed: {err.strip().splitlines()[-1:]}")


def _mps_cap(where: dict) -> dict:
    pct = where.get("mps_threads_pct")
    return {} if pct is None else {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(pct)}


def job_key(job: dict) -> str:
    return json.dumps([job["workload"], sorted(job["settings"].items())])


def by_hand(results: dict, args, out: Path) -> dict:
    """(b) the same jobs, placement and repeats, started here; returns per job id the isolated
    and shared rates (lists over repeats)."""
    with contextlib.ExitStack() as stack:
        mps = stack.enter_context(mps_daemon(out / "mps")) if results["mode"] == "mps" else {}
        return _by_hand(results, args, out, mps)


def _by_hand(results: dict, args, out: Path, mps: dict) -> dict:
    jobs, placement = results["jobs"], results["placement"]
    distinct = {job_key(j): j for j in jobs}
    rates = {j["id"]: {"isolated": [], "shared": []} for j in jobs}
    for r in range(args.repeats):
        alone, setup = {}, {}
        for key, job in distinct.items():  # alone: whole device, the same threads, no MPS cap
            folder = out / f"r{r}-alone-{len(alone)}"
            cmd = train_command(job, placement[job["id"]]["threads"], folder, args)
            run_children([cmd], [None], [0], [mps])
            timing = read_timing(folder)
            alone[key], setup[key] = timing["samples_per_s"], timing["setup_s"]
        folders = [out / f"r{r}-together-{i}" for i in range(len(jobs))]
        cmds = [
            train_command(j, placement[j["id"]]["threads"], f, args) for j, f in zip(jobs, folders)
        ]
        longest = max(setup[job_key(j)] for j in jobs)
        delays = [longest - setup[job_key(j)] for j in jobs]  # timed steps start together
        envs = [{**mps, **_mps_cap(placement[j["id"]])} for j in jobs]
        run_children(cmds, [placement[j["id"]]["cpus"] for j in jobs], delays, envs)
        for job, folder in zip(jobs, folders):
            rates[job["id"]]["isolated"].append(alone[job_key(job)])
            rates[job["id"]]["shared"].append(read_timing(folder)["samples_per_s"])
    return rates


def figures(rates: dict) -> dict:
    """NP per job (mean over repeats), STP and ANTT (per repeat, then mean): the definitions of
    Eyerman & Eeckhout, written out here rather than taken from gpulab."""
    np_runs = {jid: [s / i for s, i in zip(r["shared"], r["isolated"])] for jid, r in rates.items()}
    per_repeat = list(zip(*np_runs.values()))
    return {
        "np": {jid: statistics.mean(v) for jid, v in np_runs.items()},
        "stp": statistics.mean(sum(rep) for rep in per_repeat),
        "antt": statistics.mean(statistics.mean(1 / x for x in rep) for rep in per_repeat),
    }


def share_figures(results: dict) -> tuple[dict, dict]:
    """Share's own figures, and its rates per job id in the by-hand layout."""
    got = {
        "np": {j["id"]: j["np_mean"] for j in results["jobs"]},
        "stp": results["set"]["stp"],
        "antt": results["set"]["antt"],
    }
    rates = {
        j["id"]: {
            "isolated": j["isolated"]["samples_per_s"],
            "shared": j["shared"]["samples_per_s"],
        }
        for j in results["jobs"]
    }
    return got, rates


def spread(values: list[float]) -> float:
    """Relative spread of repeated measurements of one thing: max/min - 1."""
    return max(values) / min(values) - 1


def noise_band(share_rates: dict, hand_rates: dict) -> float:
    """The largest spread of one job's isolated rate over all its runs in this check (share's
    and by-hand's alike: the same command, the same machine)."""
    spreads = []
    for jid in share_rates:
        runs = share_rates[jid]["isolated"] + hand_rates[jid]["isolated"]
        spreads.append(spread(runs))
    return max(spreads)


def check_one(specs: list[str], mode: str, args, tmp: Path) -> dict:
    name = " ".join(specs)
    safe = name.replace(" ", "+").replace(":", "_").replace("=", "").replace(",", "_")
    folder = tmp / f"{safe}-{mode}"
    results = run_share(specs, mode, args, folder / "share")
    hand_rates = by_hand(results, args, folder / "hand")
    share, share_rates = share_figures(results)
    hand = figures(hand_rates)
    band = noise_band(share_rates, hand_rates)
    np_band = (1 + band) ** 2 - 1  # an NP is a quotient of two rates: its noise compounds
    ratios = {jid: share["np"][jid] / hand["np"][jid] for jid in share["np"]}
    ratios["STP"] = share["stp"] / hand["stp"]
    agree = all(abs(r - 1) <= np_band for r in ratios.values())
    return {
        "jobs": name, "mode": mode, "placement": results["placement"],
        "share": share, "by_hand": hand, "ratios": ratios,
        "share_rates": share_rates, "by_hand_rates": hand_rates,
        "isolated_spread": band, "np_band": np_band, "agree": agree,
    }  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print(f"{'jobs':<36} {'mode':<10} {'figure':<9} {'share':>7} {'by hand':>8} {'ratio':>7} "
          f"{'band':>6}")  # fmt: skip
    for row in rows:
        lines = [
            (jid, row["share"]["np"][jid], row["by_hand"]["np"][jid]) for jid in row["share"]["np"]
        ]
        lines += [("STP", row["share"]["stp"], row["by_hand"]["stp"])]
        lines += [("ANTT", row["share"]["antt"], row["by_hand"]["antt"])]
        for label, a, b in lines:
            fig = f"NP {label}" if "#" in label else label
            print(f"{row['jobs'][:36]:<36} {row['mode']:<10} {fig:<9} {a:>7.3f} {b:>8.3f} "
                  f"{a / b:>7.3f} {row['np_band']:>5.1%}")  # fmt: skip
    for row in rows:
        verdict = "agree" if row["agree"] else "DISAGREE"
        print(f"{row['jobs']} / {row['mode']}: isolated-rate spread {row['isolated_spread']:.1%}, "
              f"NP band ±{row['np_band']:.1%}: share and by hand {verdict}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS,
                        help="job sets, each a quoted list of share JOBs")  # fmt: skip
    parser.add_argument("--modes", default="timeslice,partition")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--preset", default="debug", help="every job's preset")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        rows = [
            check_one(job_set.split(), mode, args, root)
            for job_set in args.sets
            for mode in args.modes.split(",")
        ]
    print_table(rows)
    summary = {
        "benchmark": "share_check",
        "method_version": METHOD_VERSION,
        "device": args.device,
        "preset": args.preset,
        "cores": len(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "common_settings": COMMON,
        "all_agree": all(r["agree"] for r in rows),
        "results": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
