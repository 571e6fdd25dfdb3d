"""The probe's verdict, its samples/s ceilings, and the tables a person reads."""

from gpulab.probe.bandwidth import best_rate
from gpulab.probe.compute import best_by_dtype


def _gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.1f} GB/s" if x >= 1 else f"{x * 1e3:,.0f} MB/s"


def _pct(x: float | None) -> str:
    return "peak unknown" if x is None else f"{x:.0f}%"


def feeds(result: dict) -> dict[str, float]:
    """GB/s of each way a sample can reach the training device (what was measured)."""
    out: dict[str, float] = {}
    storage = result.get("storage", {})
    if "error" not in storage:
        out["storage cold"] = storage["seq_read_cold_gbps"]["median"]
        out["page cache"] = storage["seq_read_warm_gbps"]["median"]
    bw = result["bandwidth"]
    for key, label in (("h2d_pageable", "host->GPU pageable"), ("h2d_pinned", "host->GPU pinned")):
        best = best_rate(bw.get(key, []))
        if best:
            out[label] = best["gbps_median"]
    return out


def ceilings(result: dict) -> dict:
    """Samples/s each path could deliver at `sample_bytes` a sample: an upper bound for training."""
    size = result["sample_bytes"]
    return {
        "sample_bytes": size,
        "samples_per_s": {k: gbps * 1e9 / size for k, gbps in feeds(result).items()},
    }


def verdict(result: dict) -> list[str]:
    """Short sentences a person can act on."""
    lines = [_compute_line(result)]
    bw = result["bandwidth"]
    if "device_copy" in bw:
        dc = bw["device_copy"]
        lines.append(
            f"device memory copies at {_gb(dc['gbps_median'])} (read+write), "
            f"{_pct(dc['pct_of_peak'])} of the datasheet's {_gb(dc['peak_gbps'])}"
        )
        pinned, pageable = best_rate(bw["h2d_pinned"]), best_rate(bw["h2d_pageable"])
        link = bw["link"]
        link_text = (
            f"PCIe gen{link['gen']} x{link['width']}, {_gb(link['theoretical_gbps'])}"
            if link["theoretical_gbps"]
            else "link rate unknown"
        )
        lines.append(
            f"this machine moves {_gb(pinned['gbps_median'])} to the GPU from pinned memory "
            f"({_pct(pinned.get('pct_of_link'))} of {link_text}) but "
            f"{_gb(pageable['gbps_median'])} from pageable memory"
        )
    else:
        hc = bw["host_copy"]
        lines.append(
            f"host memory copies at {_gb(hc['gbps_median'])} (read+write, {bw['threads']} threads)"
        )
    lines.append(_storage_line(result.get("storage", {})))
    lines.append(_ceiling_line(result["ceilings"]))
    return lines


def _compute_line(result: dict) -> str:
    best = best_by_dtype(result["compute"])
    if not best:
        return "no matrix-multiply result passed its check"
    parts = []
    for dtype, r in best.items():
        rate = (
            f"{r['tflops_best']:,.1f} TFLOP/s"
            if r["tflops_best"] >= 1
            else f"{r['tflops_best'] * 1e3:,.0f} GFLOP/s"
        )
        pct = f" ({_pct(r['pct_of_peak'])} of peak)" if r["pct_of_peak"] is not None else ""
        parts.append(f"{dtype} {rate}{pct}")
    where = result["device_name"] + (
        f", {result['threads']} threads" if result["device"] == "cpu" else ""
    )
    return f"matrix multiply on {where}: " + ", ".join(parts)


def _storage_line(storage: dict) -> str:
    if "error" in storage:
        return f"storage not measured: {storage['error']}"
    r4k = storage["random_4k"]
    return (
        f"storage in {storage['dir']} ({storage['filesystem']}) delivers "
        f"{_gb(storage['seq_read_cold_gbps']['median'])} cold and "
        f"{_gb(storage['seq_read_warm_gbps']['median'])} from the page cache; random 4 KiB "
        f"reads {r4k['iops_median']:,.0f} IOPS; writes with fsync {_gb(storage['write_fsync_gbps'])}"
    )


def _ceiling_line(ceil: dict) -> str:
    rates = ceil["samples_per_s"]
    if not rates:
        return "no input path was measured"
    slowest = min(rates, key=rates.get)
    listed = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
    return (
        f"at {ceil['sample_bytes']:,} bytes a sample the input paths cap training at (samples/s): "
        f"{listed}; a run that reads every sample cold is bounded by {slowest}"
    )


def render(result: dict, console) -> None:
    """One table per tenet, then the verdict."""
    from rich.table import Table

    inv = result["inventory"]
    console.print(
        f"[bold]gpulab probe[/] on {result['device_name']} ({result['device']}), "
        f"{inv['cpu_model']}, {inv['cpu_physical_cores']} cores / "
        f"{inv['cpu_logical_cores']} threads{_usable(inv)}, {inv['memory_bytes'] / 2**30:.0f} GiB, "
        f"NUMA nodes: {inv['numa_nodes'] or 'n/a'}"
    )
    for acc in inv["accelerators"]:
        console.print("  " + _accelerator_line(acc))
    table = Table(title="compute: dense matrix multiply (best of samples; check vs float64)")
    for col in ("dtype", "n", "TFLOP/s best", "median", "% of peak", "rel. error", "check"):
        table.add_column(col, justify="right")
    for r in result["compute"]["results"]:
        table.add_row(
            r["dtype"],
            str(r["n"]),
            f"{r['tflops_best']:.3g}",
            f"{r['tflops_median']:.3g}",
            _pct(r["pct_of_peak"]),
            f"{r['rel_error']:.1e}",
            "ok" if r["check_passed"] else "FAILED",
        )
    for s in result["compute"]["skipped"]:
        table.add_row(s["dtype"], str(s.get("n", "")), "skipped", "", "", "", s["reason"])
    console.print(table)
    console.print(_bandwidth_table(result["bandwidth"]))
    if "error" not in result.get("storage", {}):
        console.print(_storage_table(result["storage"]))
        for note in result["storage"]["notes"]:
            console.print(f"note: {note}")
    if result["peak"]:
        console.print(f"peaks: {result['peak']['model']}, {result['peak']['source']}")
    for line in result["verdict"]:
        console.print(f"- {line}")
    stages = result.get("stage_seconds")
    if stages:
        slowest = max(stages, key=stages.get)
        console.print(
            f"probe took {sum(stages.values()):.0f} s; longest stage: {slowest} ({stages[slowest]:.0f} s)"
        )


def _usable(inv: dict) -> str:
    """', 4 usable here' where a CPU set or container quota allows fewer than the machine has."""
    usable = inv.get("cpu_usable_cores")  # absent from results of older gpulab versions
    return f", {usable} usable here" if usable and usable < inv["cpu_logical_cores"] else ""


def _accelerator_line(acc: dict) -> str:
    na = "not available"
    facts = [
        acc["name"],
        f"{acc.get('memory_bytes', 0) / 2**30:.0f} GiB",
        f"{acc.get('sm_count', '?')} SMs",
        f"cc {acc.get('compute_capability', '?')}",
        f"driver {acc.get('driver_version', na)}",
    ]
    if "nvml" in acc:
        facts.append(f"NVML {acc['nvml']}")
    else:
        facts += [
            f"SM clock {acc.get('sm_clock_mhz') or na}/{acc.get('sm_clock_max_mhz') or na} MHz",
            f"power limit {acc.get('power_limit_w') or na} W",
            f"PCIe gen{acc.get('pcie_gen') or '?'} x{acc.get('pcie_width') or '?'} "
            f"(max gen{acc.get('pcie_gen_max') or '?'} x{acc.get('pcie_width_max') or '?'})",
            f"NVLink links {acc.get('nvlink_active_links') if acc.get('nvlink_active_links') is not None else na}",
        ]
    return ", ".join(str(f) for f in facts)


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def _bandwidth_table(bw: dict):
    from rich.table import Table

    table = Table(title="bandwidth (GB/s = 1e9 bytes/s; medians)")
    for col in ("path", "size", "GB/s", "% of peak / link"):
        table.add_column(col, justify="right")
    if "host_copy" in bw:
        hc = bw["host_copy"]
        table.add_row(
            "host memory copy (read+write)", _size(hc["bytes"]), f"{hc['gbps_median']:.1f}", ""
        )
        return table
    dc = bw["device_copy"]
    table.add_row(
        "device memory copy (read+write)",
        _size(dc["bytes"]),
        f"{dc['gbps_median']:.1f}",
        _pct(dc["pct_of_peak"]),
    )
    for key in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"):
        for row in bw[key]:
            table.add_row(
                key.replace("_", " "),
                _size(row["bytes"]),
                f"{row['gbps_median']:.2f}",
                _pct(row.get("pct_of_link")),
            )
    bi = bw["bidirectional"]
    table.add_row(
        "both directions, pinned",
        _size(bi["bytes_each_way"]) + " each",
        f"{bi['gbps_median']:.1f}",
        "",
    )
    for p in bw.get("peer", []):
        table.add_row(
            f"GPU{p['src']} -> GPU{p['dst']} (peer {p['peer_access']})",
            "",
            f"{p['gbps_median']:.1f}",
            "",
        )
    return table


def _storage_table(st: dict):
    from rich.table import Table

    table = Table(
        title=f"file access: {st['dir']} ({st['filesystem']}), {_size(st['file_bytes'])} "
        f"test file, cache bypass: {st['cache_bypass']}"
    )
    table.add_column("test")
    table.add_column("GB/s", justify="right")
    table.add_row("write + fsync", f"{st['write_fsync_gbps']:.2f}")
    table.add_row("sequential read, cold", f"{st['seq_read_cold_gbps']['median']:.2f}")
    table.add_row("sequential read, page cache", f"{st['seq_read_warm_gbps']['median']:.2f}")
    r4k = st["random_4k"]
    table.add_row(
        f"random 4 KiB reads ({r4k['iops_median']:,.0f} IOPS)", f"{r4k['mbps_median'] / 1e3:.3f}"
    )
    for c in st["concurrent"]:
        table.add_row(
            f"{c['readers']} concurrent readers, {c['mode']}", f"{c['aggregate_gbps']:.2f}"
        )
    return table
