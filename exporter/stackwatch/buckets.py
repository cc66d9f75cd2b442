"""Histogram buckets, the Prometheus way, for the histograms stackwatch keeps by hand (probe
durations per target, scheduler lag, GC pauses): one bucket search, one cumulative form."""

from __future__ import annotations

from bisect import bisect_left


def bucket_index(bounds: tuple[float, ...], value: float) -> int:
    """The bucket a value falls in (``le``: a value equal to a bound is in it); ``len(bounds)``
    is +Inf."""
    return bisect_left(bounds, value)


def le(bound: float) -> str:
    """A bound as the exposition writes it ("0.5", "1.0"), as client_python does."""
    return repr(float(bound))


class Buckets:
    """A histogram's counts per bucket and its sum, for fixed upper bounds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of observations at or under it), the +Inf bucket last."""
        out, running = [], 0
        for bound, n in zip((*[le(b) for b in self.bounds], "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out
