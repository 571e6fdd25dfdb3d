"""Statistics of repeated runs: olympic mean, spread, agreement, and speedups with an interval."""

import math
import statistics

NOISY_CV = 0.10  # repeats that disagree by more than this get a warning


def olympic_mean(values: list[float]) -> float:
    """The mean without the best and the worst value when there are at least three."""
    v = sorted(values)
    if len(v) >= 3:
        v = v[1:-1]
    return sum(v) / len(v)


def iqr(values: list[float]) -> float:
    """Interquartile range (inclusive quartiles); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def cv(values: list[float]) -> float | None:
    """Coefficient of variation (sample standard deviation / mean); None for one value."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean else None


def speedup(cpu_rates: list[float], rates: list[float], level: float = 0.95) -> dict | None:
    """How many times faster `rates` are than `cpu_rates` (throughputs; higher is faster).

    The point estimate is the ratio of geometric means; the interval is Welch's t-interval on
    the difference of mean log-rates, exponentiated (None with fewer than two repeats on a side).
    None in place of the whole answer where a side has no positive rate (its runs timed nothing).
    """
    a, b = [math.log(x) for x in cpu_rates if x > 0], [math.log(x) for x in rates if x > 0]
    if not a or not b:
        return None
    diff = statistics.fmean(b) - statistics.fmean(a)
    out = {"speedup": math.exp(diff), "low": None, "high": None, "level": level}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        out.update(low=out["speedup"], high=out["speedup"])
        return out
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, df) * se
    out.update(low=math.exp(diff - half), high=math.exp(diff + half))
    return out


def summarize(values: list[float]) -> dict:
    """Olympic mean, median, IQR, min, max and CV of repeated measurements."""
    return {
        "olympic_mean": olympic_mean(values),
        "median": statistics.median(values),
        "iqr": iqr(values),
        "min": min(values),
        "max": max(values),
        "cv": cv(values),
        "n": len(values),
        "noisy": (cv(values) or 0) > NOISY_CV,
    }
