"""Is a CNN run input-bound, and which stage bounds it?

`gpulab bench cnn --data DIR --diagnose` measures in one run, with the same model, batch and
steps:
  (i)   synthetic batches on the device: the compute ceiling;
  (ii)  the real pipeline with the files in the page cache (warm);
  (iii) the real pipeline cold: the files' cached pages dropped first (posix_fadvise
        DONTNEED, which needs no privileges for clean pages), where the OS allows it and
        mincore(2) then finds at most 5% of the pages still in memory;
  (iv)  the loader alone, without training: reading + decoding + augmenting;
  (v)   synthetic batches again: the two synthetic runs bracket the real ones, their mean is the
        ceiling and their difference the machine's own noise;
and the stages on their own: storage (reading the files' bytes cold), host→device (a pinned copy
of one batch as the loader hands it over) and compute (i). The input-bound fraction is the share
of the synthetic rate the real pipeline loses; the bounding stage is the slowest one, or
"overlap" when every input stage alone keeps up with compute but together with it they do not
(e.g. decoding workers and training competing for the same CPU cores). A loss no larger than
the two synthetic runs differ by is noise, not input: on a shared or throttling machine identical
runs move by 10-20%, and a compute-bound pipeline measured in a slow moment must not read as
input-bound.
"""

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gpulab.data.batches import endless, loader_workers, read_ahead
from gpulab.runtime.device import resolve_device, synchronize
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.records import rate_text
from gpulab.train import TrainOptions, train
from gpulab.workloads.cnn.config import CnnConfig
from gpulab.workloads.registry import get_workload

COMPUTE_BOUND_AT = 0.9  # the real pipeline keeps at least this share of the synthetic rate


def dataset_files(data: Path) -> list[Path]:
    """Every file the pipeline reads: shards of a packed set, or an ImageFolder's images."""
    from gpulab.data.shards import IMAGE_EXTS, is_packed, read_manifest

    if is_packed(data):
        return [data / s["name"] for s in read_manifest(data)["shards"]]
    return sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def drop_cache(files: list[Path]) -> bool:
    """Ask the OS to forget the files' cached pages; False where it cannot or did not (the
    advice is only advice: mincore says how much of the files is still in memory)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    from gpulab.probe.storage import drop_cached_pages

    try:
        return drop_cached_pages(files)
    except OSError:
        return False


def read_all(files: list[Path]) -> tuple[int, float]:
    """(bytes, seconds) to read every file once, sequentially."""
    total, t0 = 0, time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total, time.perf_counter() - t0


def probe_figures(probe_json: Path | None) -> dict | None:
    """The probe's storage and host→device figures, for the diagnosis to stand beside."""
    if probe_json is None:
        return None
    import json

    from gpulab.probe.bandwidth import best_rate

    try:
        doc = json.loads(Path(probe_json).read_text())
        storage, bandwidth = doc.get("storage") or {}, doc["bandwidth"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GpulabError(
            f"--probe {probe_json} is not a `gpulab probe --json` result ({e}); run gpulab probe"
        ) from None
    pinned, pageable = (
        best_rate(bandwidth.get("h2d_pinned", [])),
        best_rate(bandwidth.get("h2d_pageable", [])),
    )
    return {
        "device_name": doc.get("device_name"),
        "storage_cold_gbps": (storage.get("seq_read_cold_gbps") or {}).get("median"),
        "storage_warm_gbps": (storage.get("seq_read_warm_gbps") or {}).get("median"),
        "h2d_pinned_gbps": pinned["gbps_median"] if pinned else None,
        "h2d_pageable_gbps": pageable["gbps_median"] if pageable else None,
    }


def classify(
    rates: dict[str, float | None], synthetic: float, real: float, noise: float = 0.0
) -> dict:
    """Input-bound fraction, verdict and bounding stage from images/s per stage; `noise` is how
    far apart identical synthetic runs were (a fraction of their mean): a smaller loss is noise."""
    lost = max(0.0, 1.0 - real / synthetic) if synthetic > 0 else 0.0
    known = {k: v for k, v in rates.items() if v is not None}
    bound = min(known, key=known.get) if known else "compute"
    if lost <= max(1.0 - COMPUTE_BOUND_AT, noise):
        verdict, bound = "compute-bound", "compute"
    else:
        verdict = "input-bound"
        if bound == "compute":  # each input stage alone keeps up: they do not overlap compute
            bound = "overlap"
    return {"verdict": verdict, "input_bound_fraction": lost, "bounding_stage": bound}


def _train_rate(cfg, device: str, out: Path, quiet: bool = True) -> dict:
    from gpulab.probe.peaks import training_peak

    peak = training_peak(device)
    options = TrainOptions(device=device, out=out, quiet=quiet, datasheet_peak=peak)
    t = train("cnn", cfg, options).record.timing
    return {"images_per_s": t.samples_per_s, "data_wait_fraction": t.data_wait_fraction}


def _loader_rate(cfg, device: torch.device, steps: int) -> float:
    """Images/s of the input pipeline alone: batches read, decoded, augmented and placed on the
    device as training would get them, with no training step in between; epoch after epoch,
    as training reads them, where one epoch has fewer batches than the warm-up and steps."""
    from gpulab.runtime.distributed import dist_info

    data = get_workload("cnn").build_data(cfg, device, dist_info())
    return loader_rate(endless(data.train), device, steps, warm=loader_workers(cfg.workers) + 1)


def loader_rate(batches, device: torch.device, steps: int, warm: int = 1) -> float:
    """Samples/s over `steps` (inputs, labels) batches after the first `warm`: with W worker
    processes the first W batches come at once, made while the clock was not yet running, so
    `warm` = W + 1 times the steady rate. A stream too short for that is timed after its first
    batch. The device is synchronized before each clock read."""
    t_first = t_warm = None
    after_first = after_warm = 0  # samples that arrived after each clock start
    for k, (_, labels) in enumerate(batches):
        after_first += len(labels) if k > 0 else 0
        after_warm += len(labels) if t_warm is not None else 0
        if k in (0, warm):
            synchronize(device)
            now = time.perf_counter()
            t_first = now if k == 0 else t_first
            t_warm = now if k == warm else t_warm
        if k >= warm + steps:
            break
    synchronize(device)
    end = time.perf_counter()
    if after_warm:
        return after_warm / (end - t_warm)
    return after_first / (end - t_first) if after_first else 0.0


def _h2d_rate(device: torch.device, batch: int, size: int, uint8: bool) -> float | None:
    """Images/s a pinned host→device copy of one batch sustains; None off CUDA."""
    if device.type != "cuda":
        return None
    nbytes = batch * 3 * size * size * (1 if uint8 else 4)
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    for _ in range(3):
        dev.copy_(host, non_blocking=True)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        dev.copy_(host, non_blocking=True)
    synchronize(device)
    return 10 * batch / (time.perf_counter() - t0)


@dataclass(frozen=True)
class Plan:
    """What one diagnosis runs: the cnn configs for real and synthetic data, and on what."""

    real: CnnConfig  # on the real data
    synthetic: CnnConfig  # the same model, batch and steps on synthetic batches
    device: torch.device
    files: list[Path]  # every file the real pipeline reads
    samples: int  # images those files hold
    packed: bool  # shards go to the GPU as uint8 bytes, a folder's images as float32
    out: Path  # runs root for the training runs
    steps: int  # timed steps of the loader alone


@dataclass(frozen=True)
class Measurements:
    """The raw figures of one diagnosis, in images/s unless a name says otherwise. The verdict
    follows from these alone (`summarize`), so it can be checked on given figures."""

    synthetic_runs: tuple[float, float]  # (i) before and (v) after the real runs
    warm: dict  # (ii) {"images_per_s", "data_wait_fraction"}
    cold: dict  # (iii) the same, page cache dropped first
    cache_dropped: bool  # whether (iii) and the storage read were cold
    loader: float  # (iv) the loader alone
    storage_bytes: int  # one sequential read of every file
    storage_seconds: float
    samples: int  # images those bytes hold
    host_to_device: float | None  # a pinned copy of one batch; None off CUDA


def plan(
    data: Path,
    model: str,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    out: Path,
    overrides: dict | None,
) -> Plan:
    """The configs and files of a diagnosis of `data`; refuses a missing folder."""
    from gpulab.data.shards import is_packed, read_manifest

    data = Path(data)
    if not data.exists():
        raise GpulabError(f"--data {data}: no such folder; pass an ImageFolder or packed shards")
    dev = resolve_device(device)
    base = {
        "model": model,
        "batch_size": str(batch),
        "warmup_steps": str(warmup),
        "steps_per_epoch": str(steps + warmup),
        **(overrides or {}),
    }
    real = get_workload("cnn").config("default", {**base, "data": str(data)})
    synthetic = replace(real, data="synthetic", classes=1000)
    # the loader's workers fill their read-ahead while the model is set up; batches in it
    # cost the timed steps nothing, so the real pipeline warms up past them
    ahead = read_ahead(loader_workers(real.workers))
    real = replace(real, warmup_steps=warmup + ahead, steps_per_epoch=steps + warmup + ahead)
    files, packed = dataset_files(data), is_packed(data)
    samples = int(read_manifest(data)["samples"]) if packed else len(files)
    return Plan(real, synthetic, dev, files, samples, packed, out, steps)


def measure(p: Plan, say=print) -> Measurements:
    """(i)-(v) and the stages, in this order: the synthetic runs bracket the real ones."""
    dev = str(p.device)
    say("  (i) synthetic batches on the device")
    before = _train_rate(p.synthetic, dev, p.out)["images_per_s"]
    read_all(p.files)  # warm the page cache
    say("  (ii) real pipeline, files in the page cache")
    warm = _train_rate(p.real, dev, p.out)
    say("  (iii) real pipeline, page cache dropped")
    dropped = drop_cache(p.files)
    cold = _train_rate(p.real, dev, p.out)
    say("  (iv) the loader alone")
    read_all(p.files)
    loader = _loader_rate(p.real, p.device, p.steps)
    drop_cache(p.files)
    nbytes, seconds = read_all(p.files)
    say("  (v) synthetic batches again")
    after = _train_rate(p.synthetic, dev, p.out)["images_per_s"]
    h2d = _h2d_rate(p.device, p.real.batch_size, p.real.image_size, p.packed)
    return Measurements(
        (before, after), warm, cold, dropped, loader, nbytes, seconds, p.samples, h2d
    )


def summarize(m: Measurements, probed: dict | None = None) -> dict:
    """Rates per stage, the synthetic ceiling and its noise, and the verdict, from `m`."""
    before, after = m.synthetic_runs
    ceiling = (before + after) / 2
    noise = abs(before - after) / ceiling if ceiling > 0 else 0.0
    seconds = m.storage_seconds
    stages = {
        "storage": m.samples / seconds if m.cache_dropped and seconds > 0 else None,
        "decode": m.loader,
        "host_to_device": m.host_to_device,
        "compute": ceiling,
    }
    return {
        "synthetic": {
            "images_per_s": ceiling,
            "runs_images_per_s": [before, after],
            "noise": noise,
        },
        "real_warm": m.warm,
        "real_cold": m.cold,
        "cache_dropped": m.cache_dropped,
        "loader_alone_images_per_s": m.loader,
        "storage": {
            "bytes": m.storage_bytes,
            "seconds": seconds,
            "gbps": m.storage_bytes / seconds / 1e9 if seconds else None,
        },
        "stages_images_per_s": stages,
        "cold_input_bound_fraction": max(0.0, 1 - m.cold["images_per_s"] / ceiling),
        "probe": probed,
        **classify(stages, ceiling, m.warm["images_per_s"], noise),
    }


def diagnose(
    data: Path,
    model: str = "resnet50",
    batch: int = 64,
    steps: int = 30,
    warmup: int = 5,
    device: str = "auto",
    out: Path = Path("runs"),
    overrides: dict | None = None,
    say=print,
    probe: Path | None = None,
) -> dict:
    """Measure (i)-(v) and the stages; return rates, verdicts and notes."""
    probed = probe_figures(probe)  # read before any work: a wrong file costs nothing
    p = plan(data, model, batch, steps, warmup, device, out, overrides)
    say(
        f"diagnose: {len(p.files)} files, {model}, batch {batch}, {steps} timed steps on {p.device}"
    )
    head = {
        "data": str(data),
        "device": str(p.device),
        "model": model,
        "batch": batch,
        "steps": steps,
    }
    return {**head, **summarize(measure(p, say), probed)}


def _probe_lines(probed: dict | None) -> list[str]:
    if not probed:
        return []
    fmt = lambda v: "n/a" if v is None else f"{v:.2f} GB/s"  # noqa: E731
    return [
        f"probe ({probed['device_name']}): storage {fmt(probed['storage_cold_gbps'])} cold, "
        f"{fmt(probed['storage_warm_gbps'])} from the page cache; host to device "
        f"{fmt(probed['h2d_pinned_gbps'])} pinned, {fmt(probed['h2d_pageable_gbps'])} pageable"
    ]


def render(d: dict) -> str:
    """The diagnosis as a few plain lines."""
    s = d["stages_images_per_s"]
    fmt = lambda v: "n/a" if v is None else f"{rate_text(v)} img/s"  # noqa: E731
    syn = d["synthetic"]
    lines = [
        f"{d['model']} on {d['device']}, batch {d['batch']}, data {d['data']}",
        f"  synthetic (compute ceiling)   {fmt(syn['images_per_s'])}  (mean of "
        + " and ".join(rate_text(r) for r in syn["runs_images_per_s"])
        + f", {100 * syn['noise']:.0f}% apart)",
        f"  real, warm page cache         {fmt(d['real_warm']['images_per_s'])}"
        f"  (data wait {100 * d['real_warm']['data_wait_fraction']:.0f}% of the step time)",
        f"  real, cold                    {fmt(d['real_cold']['images_per_s'])}"
        + ("" if d["cache_dropped"] else "  (the page cache could not be dropped: not cold)"),
        f"  loader alone                  {fmt(d['loader_alone_images_per_s'])}",
        "stages: " + ", ".join(f"{k} {fmt(v)}" for k, v in s.items()),
        f"storage read {d['storage']['gbps'] or 0:.2f} GB/s "
        + ("cold" if d["cache_dropped"] else "(page cache not dropped)"),
        *_probe_lines(d.get("probe")),
        *(
            [
                f"note: two identical synthetic runs differed by {100 * syn['noise']:.0f}%: "
                "this machine's speed moves, and a loss within that is counted as noise "
                "(more --steps narrow it)"
            ]
            if syn["noise"] > 1 - COMPUTE_BOUND_AT
            else []
        ),
        f"{d['verdict']}: the real pipeline reaches "
        f"{100 * (1 - d['input_bound_fraction']):.0f}% of the synthetic rate "
        f"({100 * (1 - d['cold_input_bound_fraction']):.0f}% cold); bounding stage: "
        f"{d['bounding_stage']}",
    ]
    return "\n".join(lines)
