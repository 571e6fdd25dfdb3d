"""The largest batch that fits: a search over a `fits(batch) -> bool` trial."""

from collections.abc import Callable

from gpulab.runtime.errors import GpulabError


def search_batch(
    fits: Callable[[int], bool], start: int, limit: int = 65_536, headroom: float = 0.9
) -> tuple[int, list[tuple[int, bool]]]:
    """(chosen batch, [(batch, fits), ...] in the order tried).

    From `start`, double while it fits (or halve until it does), then bisect between the
    largest fit and the smallest failure to within an eighth, and back off to `headroom` of
    the largest fit (rounded down to a multiple of 8 where that is at least 8), so that
    fragmentation later in a long run does not push it over.
    """
    tried: list[tuple[int, bool]] = []

    def attempt(batch: int) -> bool:
        ok = fits(batch)
        tried.append((batch, ok))
        return ok

    batch = max(1, min(start, limit))
    if attempt(batch):
        while batch * 2 <= limit and attempt(batch * 2):
            batch *= 2
        lo, hi = batch, batch * 2
    else:
        while batch > 1:
            batch //= 2
            if attempt(batch):
                break
        else:
            raise GpulabError(
                "not even a batch of 1 fits in device memory; use a smaller model or input size"
            )
        lo, hi = batch, batch * 2
    while hi <= limit and hi - lo > max(lo // 8, 1):
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    chosen = int(lo * headroom)
    chosen = chosen - chosen % 8 if chosen >= 8 else max(chosen, 1)
    return chosen, tried
