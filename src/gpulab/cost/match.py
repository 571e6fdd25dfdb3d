"""Which price rows stand for a measured device: the accelerator family of its name ("NVIDIA H100
80GB HBM3" is an H100), CPU-only instances for "cpu", or the instance `--map` names."""

import difflib
import re

from gpulab.cost.prices import PriceRow, PriceTable, accelerator_family
from gpulab.cost.results import Measured
from gpulab.probe.peaks import lookup_peak
from gpulab.runtime.errors import GpulabError


def parse_maps(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise GpulabError(
                f"--map {pair!r}: expected DEVICE=INSTANCE, e.g. --map cpu=m7i.12xlarge"
            )
        device, instance = (s.strip() for s in pair.split("=", 1))
        out[device] = instance
    return out


def device_family(device: str, device_name: str, table: PriceTable) -> str | None:
    """The accelerator family of a measured device ("" for the CPU), or None when unknown."""
    if device == "cpu":
        return ""
    peak = lookup_peak(device_name)
    if peak is not None:
        return accelerator_family(peak.model.split()[0])
    for family in sorted({r.family for r in table.rows if r.family}, key=len, reverse=True):
        if re.search(rf"\b{re.escape(family)}\b", device_name.upper()):
            return family
    return None


def rows_for(m: Measured, table: PriceTable, maps: dict[str, str]) -> list[PriceRow]:
    """The price rows for a measured device; a one-line error listing close matches if none."""
    wanted = maps.get(m.device_name) or maps.get(m.device)
    if wanted is not None:
        rows = table.instance(wanted)
        if not rows:
            raise GpulabError(
                f"--map {m.device}={wanted}: no instance {wanted!r} in {table.path}"
                + _close(wanted, [r.instance_type for r in table.rows])
            )
        return rows
    family = device_family(m.device, m.device_name, table)
    rows = [r for r in table.rows if family is not None and r.family == family]
    if family == "":
        rows = [r for r in table.rows if r.cpu_only]
        _one_cpu_per_provider(rows, table)
    if not rows:
        name = m.device_name or m.device
        candidates = [r.instance_type for r in table.rows] + sorted(
            {r.accelerator for r in table.rows}
        )
        raise GpulabError(
            f"device {name!r} ({m.device} in {m.results}): no price row in {table.path}; "
            f"pass --map {m.device}=INSTANCE" + _close(name, candidates)
        )
    return rows


def _one_cpu_per_provider(rows: list[PriceRow], table: PriceTable) -> None:
    providers = [r.provider for r in rows]
    crowded = sorted({p for p in providers if providers.count(p) > 1})
    if crowded:
        examples = ", ".join(r.instance_type for r in rows[:3])
        raise GpulabError(
            f"{table.path}: {len(rows)} CPU-only instances ({examples}, ...); choose one with "
            "--map cpu=INSTANCE"
        )


def _close(word: str, candidates: list[str]) -> str:
    near = difflib.get_close_matches(word, candidates, n=4, cutoff=0.3)
    if not near:
        near = difflib.get_close_matches(word.split()[-1], candidates, n=4, cutoff=0.3)
    return f"; close matches: {', '.join(near)}" if near else ""
