"""Bandwidth: device memory, host<->device (pinned and pageable), both ways at once, GPU<->GPU.

GB/s are 1e9 bytes per second. A memory copy counts the bytes read plus the bytes written
(2 x size), as memory-bandwidth datasheets do; a transfer over a link counts the bytes moved.
Buffers hold seeded random data, never zeros.
"""

import statistics

import torch

from gpulab.probe.peaks import pcie_gbps, percent_of
from gpulab.runtime.timing import seconds_per_call

KiB, MiB, GiB = 1024, 1024**2, 1024**3
SWEEP_FULL = [4 * KiB * 4**k for k in range(10)]  # 4 KiB .. 1 GiB
SWEEP_QUICK = [4 * KiB, 64 * KiB, MiB, 16 * MiB, 256 * MiB]
SAMPLE_S = 0.02


def _random_bytes(nbytes: int, device: torch.device, pin: bool = False) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(nbytes)
    t = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device, generator=g)
    return t.pin_memory() if pin else t


def _seconds(run, device: torch.device, samples: int) -> list[float]:
    return seconds_per_call(run, device, samples, SAMPLE_S)


def _rate(nbytes_moved: float, seconds: list[float]) -> dict:
    rates = sorted(nbytes_moved / s / 1e9 for s in seconds)
    return {"gbps_median": statistics.median(rates), "gbps_min": rates[0], "gbps_max": rates[-1]}


def memory_copy(device: torch.device, nbytes: int, samples: int) -> dict:
    """A large copy within one memory (device HBM, or host RAM): bytes read + written."""
    src = _random_bytes(nbytes, device)
    dst = torch.empty_like(src)
    row = {
        "bytes": nbytes,
        "counted": "read+write",
        **_rate(2 * nbytes, _seconds(lambda: dst.copy_(src), device, samples)),
    }
    if not torch.equal(dst[:4096], src[:4096]):
        raise RuntimeError("memory copy check failed: destination differs from source")
    return row


def transfer_sweep(
    device_buf: torch.Tensor, host_buf: torch.Tensor, direction: str, sizes: list[int], samples: int
) -> list[dict]:
    """Host->device ('h2d') or device->host ('d2h') GB/s at each size, over slices of two buffers
    (a slice of pinned memory is pinned)."""
    pinned = host_buf.is_pinned()
    rows = []
    for nbytes in sizes:
        dev, host = device_buf[:nbytes], host_buf[:nbytes]
        dst, src = (dev, host) if direction == "h2d" else (host, dev)
        seconds = _seconds(
            lambda dst=dst, src=src: dst.copy_(src, non_blocking=pinned), device_buf.device, samples
        )
        if not torch.equal(dst[-256:].cpu(), src[-256:].cpu()):
            raise RuntimeError(f"{direction} copy check failed at {nbytes} bytes")
        rows.append({"bytes": nbytes, **_rate(nbytes, seconds)})
    return rows


def bidirectional(device: torch.device, nbytes: int, samples: int) -> dict:
    """Pinned host->device and device->host at the same time on two streams: total GB/s."""
    h_in, d_in = (
        _random_bytes(nbytes, torch.device("cpu"), pin=True),
        torch.empty(nbytes, dtype=torch.uint8, device=device),
    )
    d_out, h_out = (
        _random_bytes(nbytes, device),
        torch.empty(nbytes, dtype=torch.uint8).pin_memory(),
    )
    up, down = torch.cuda.Stream(device), torch.cuda.Stream(device)

    def both():
        with torch.cuda.stream(up):
            d_in.copy_(h_in, non_blocking=True)
        with torch.cuda.stream(down):
            h_out.copy_(d_out, non_blocking=True)
        torch.cuda.current_stream(device).wait_stream(up)
        torch.cuda.current_stream(device).wait_stream(down)

    return {"bytes_each_way": nbytes, **_rate(2 * nbytes, _seconds(both, device, samples))}


def peer_copies(nbytes: int, samples: int) -> list[dict]:
    """GPU i -> GPU j copy rate for every ordered pair of GPUs."""
    rows = []
    count = torch.cuda.device_count()
    for i in range(count):
        for j in range(count):
            if i == j:
                continue
            src = _random_bytes(nbytes, torch.device("cuda", i))
            dst = torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", j))
            torch.cuda.synchronize(i)
            seconds = _seconds(
                lambda dst=dst, src=src: dst.copy_(src), torch.device("cuda", j), samples
            )
            rows.append(
                {
                    "src": i,
                    "dst": j,
                    "peer_access": torch.cuda.can_device_access_peer(j, i),
                    **_rate(nbytes, seconds),
                }
            )
    return rows


def link_of(device_info: dict) -> dict:
    """The host link's theoretical one-way rate from the PCIe generation x width NVML reports.

    Idle GPUs often train their link down to save power, so the maximum generation and width
    define the theoretical rate; the current ones are reported beside them.
    """
    gen = device_info.get("pcie_gen_max") or device_info.get("pcie_gen")
    width = device_info.get("pcie_width_max") or device_info.get("pcie_width")
    return {
        "kind": "pcie",
        "gen": gen,
        "width": width,
        "gen_current": device_info.get("pcie_gen"),
        "width_current": device_info.get("pcie_width"),
        "theoretical_gbps": pcie_gbps(gen, width),
        "nvlink_active_links": device_info.get("nvlink_active_links"),
    }


def probe_bandwidth(
    device: torch.device,
    device_info: dict,
    memory_gbps_peak: float | None,
    copy_bytes: int,
    sizes: list[int],
    samples: int,
    progress=None,
) -> dict:
    """All bandwidth figures for one device (host memory only on a CPU)."""
    say = progress or (lambda _: None)
    if device.type != "cuda":
        say("bandwidth: host memory copy")
        return {
            "host_copy": memory_copy(torch.device("cpu"), copy_bytes, samples),
            "threads": torch.get_num_threads(),
        }
    say("bandwidth: device memory copy")
    out = {"device_copy": memory_copy(device, copy_bytes, samples)}
    out["device_copy"]["peak_gbps"] = memory_gbps_peak
    out["device_copy"]["pct_of_peak"] = percent_of(
        out["device_copy"]["gbps_median"], memory_gbps_peak
    )
    out["link"] = link_of(device_info)
    device_buf = _random_bytes(sizes[-1], device)
    pageable = _random_bytes(sizes[-1], torch.device("cpu"))
    hosts = {"pinned": pageable.pin_memory(), "pageable": pageable}
    for direction in ("h2d", "d2h"):
        for kind, host_buf in hosts.items():
            key = f"{direction}_{kind}"
            say(f"bandwidth: {key} sweep")
            out[key] = transfer_sweep(device_buf, host_buf, direction, sizes, samples)
            for row in out[key]:
                row["pct_of_link"] = percent_of(row["gbps_median"], out["link"]["theoretical_gbps"])
    del device_buf, hosts, pageable
    say("bandwidth: both directions at once")
    out["bidirectional"] = bidirectional(device, min(256 * MiB, sizes[-1]), samples)
    if torch.cuda.device_count() > 1:
        say("bandwidth: GPU to GPU")
        out["peer"] = peer_copies(min(256 * MiB, copy_bytes), samples)
    return out


def best_rate(rows: list[dict]) -> dict | None:
    """The sweep's fastest size (large transfers: the link's sustained rate)."""
    return max(rows, key=lambda r: r["gbps_median"]) if rows else None
