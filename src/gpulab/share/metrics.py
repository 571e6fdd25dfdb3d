"""Multiprogram metrics (Eyerman & Eeckhout, IEEE Micro 2008) of jobs sharing one device.

NP (normalised progress) = a job's time alone / its time shared for the same work = its shared
rate / its isolated rate; STP (system throughput) = sum of NP; ANTT (average normalised
turnaround time) = mean of 1/NP; fairness = min NP / max NP."""

import math
import statistics

LEVEL = 0.95


def normalised_progress(isolated_rate: float, shared_rate: float) -> float:
    return shared_rate / isolated_rate


def stp(nps: list[float]) -> float:
    return sum(nps)


def antt(nps: list[float]) -> float:
    return statistics.fmean(1 / np_ for np_ in nps)


def fairness(nps: list[float]) -> float:
    return min(nps) / max(nps)


def mean_of_known(values: list | None) -> float | None:
    """The mean of the values that are not None (a failed repeat has none), or None."""
    known = [v for v in values or [] if v is not None]
    return statistics.fmean(known) if known else None


def mean_interval(values: list[float], level: float = LEVEL) -> list[float] | None:
    """Student's t-interval of the mean, as the bench's intervals (None for fewer than two)."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values))
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, len(values) - 1) * se
    return [mean - half, mean + half]


def set_figures(np_by_repeat: list[list[float]]) -> dict:
    """STP, ANTT and fairness per repeat (each a list of the jobs' NP), then their means and
    intervals; None where no job was measured."""
    measured = [nps for nps in np_by_repeat if nps]
    if not measured:
        return {k: None for k in ("stp", "stp_interval", "antt", "antt_interval", "fairness")}
    stps, antts = [stp(n) for n in measured], [antt(n) for n in measured]
    return {
        "stp": statistics.fmean(stps),
        "stp_interval": mean_interval(stps),
        "antt": statistics.fmean(antts),
        "antt_interval": mean_interval(antts),
        "fairness": statistics.fmean(fairness(n) for n in measured),
    }


def conclusion(stp_value: float | None, slowest_np: float | None) -> str:
    """One plain sentence from the figures."""
    if stp_value is None or slowest_np is None:
        return "no job finished both alone and shared: nothing to conclude"
    verb = "raised" if stp_value >= 1 else "lowered"
    return (
        f"sharing {verb} total throughput {stp_value:.2f}x while the slowest job ran at "
        f"{slowest_np:.2f} of its isolated speed"
    )


def modes_conclusion(by_mode: dict[str, tuple]) -> str:
    """One plain sentence comparing modes from each mode's (STP, slowest job's NP, STP's 95%
    interval or None): a mode is named the best only where its STP interval lies above the
    runner-up's."""
    measured = {m: f for m, f in by_mode.items() if f[0] is not None and f[1] is not None}
    missing = [m for m in by_mode if m not in measured]
    if not measured:
        return "no job finished both alone and shared in any mode: nothing to conclude"
    ranked = sorted(measured, key=lambda m: measured[m][0], reverse=True)
    if len(ranked) == 1:
        text = f"only {ranked[0]} measured a job: {conclusion(*measured[ranked[0]][:2])}"
    else:
        slowest = _and(f"{measured[m][1]:.2f} ({m})" for m in ranked)
        text = f"{_stp_verdict(ranked, measured)}; the slowest job kept {slowest} of its isolated speed"
    if missing:
        text += f"; no job was measured under {', '.join(missing)}"
    return text


def _stp_verdict(ranked: list[str], measured: dict) -> str:
    first, second = (measured[m] for m in ranked[:2])
    others = _and(f"{measured[m][0]:.2f} under {m}" for m in ranked[1:])
    if first[2] and second[2] and first[2][0] <= second[2][1]:
        each = _and(f"{measured[m][0]:.2f} under {m}" for m in ranked)
        return (
            f"the modes' total throughput is the same within the noise of the repeats (STP {each})"
        )
    noise = "" if first[2] and second[2] else "; one repeat: noise unknown"
    return f"{ranked[0]} gave the highest total throughput (STP {first[0]:.2f}, against {others}{noise})"


def _and(parts) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
