"""Per-target probe history kept in memory, for the status page when no Prometheus is configured.

Two rings of buckets per target: 96 quarter-hours (the 24 h bar) and 90 days (the 90-day bar),
each bucket counting probes and successes, plus the last 120 probe durations for the latency
chart (and whether each succeeded: the recent failure ratio).  Arrays of machine numbers (bucket ids and counts as 32-bit integers, quarter-hour counts
as 16-bit ones, durations and times as 32-bit floats): about 3 KB per target
(bench/memory.py).  It covers
the time stackwatch has run: the rings are saved in the state store every few minutes and at
shutdown, and restored at start (stackwatch.app).  With ``--prometheus.url`` the status page
reads history from Prometheus instead, which spans its retention.
"""

from __future__ import annotations

import base64
import math
import zlib
from array import array
from dataclasses import dataclass

QUARTER = 900.0
DAY = 86400.0
RECENT_WINDOW = 300.0
"""The error-rate and latency alerts' window (5 minutes, the rules' ``[5m]``): the recent failure
ratio (status page, API, report) and the exact latency quantiles are taken over it."""
RECENT_FAILURES = 0.05
"""A target whose last probe passed but that failed more than this share of its probes in the
RECENT_WINDOW (at least RECENT_MIN_PROBES of them) is degraded, not up: a flapping service.  The
error-rate alert's threshold; the status page, the API and the report use this one definition."""
RECENT_MIN_PROBES = 5
QUANTILES = (0.5, 0.95, 0.99)
"""The latency quantiles exported (stackwatch_probe_recent_duration_seconds) and shown."""


class Ring:
    """``slots`` buckets of ``width`` seconds; old buckets are reused as time moves on.

    Bucket number b (since the epoch) lives in slot b % slots while it is one of the last
    ``slots`` buckets up to the newest one written (``last``); moving on clears the slots in
    between.  One integer per ring instead of a bucket number per slot (744 bytes less per
    target with both rings)."""

    __slots__ = ("width", "last", "total", "ok", "_max")

    def __init__(self, slots: int, width: float, count_type: str = "I"):
        self.width = width
        self.last = -1
        """The newest bucket written (-1: none yet)."""
        self.total = array(count_type, [0]) * slots
        self.ok = array(count_type, [0]) * slots
        self._max = 2 ** (8 * self.total.itemsize) - 1

    def _held(self, bucket: int) -> bool:
        return self.last >= 0 and self.last - len(self.total) < bucket <= self.last

    def add(self, at: float, success: bool) -> None:
        bucket = int(at // self.width)
        n = len(self.total)
        if self.last < 0:
            self.last = bucket
        elif bucket > self.last:
            for b in range(self.last + 1, self.last + 1 + min(bucket - self.last, n)):
                self.total[b % n] = self.ok[b % n] = 0
            self.last = bucket
        elif bucket <= self.last - n:
            return  # older than the ring
        i = bucket % n
        if self.total[i] == self._max:  # a probe every 14 ms or faster: keep the ratio, stop counting
            return
        self.total[i] += 1
        if success:
            self.ok[i] += 1

    def series(self, now: float) -> list[Bucket]:
        """The last ``slots`` buckets, oldest first; ``ratio`` is None where nothing was probed."""
        last = int(now // self.width)
        n = len(self.total)
        out = []
        for bucket in range(last - n + 1, last + 1):
            held = self._held(bucket)
            total = self.total[bucket % n] if held else 0
            ok = self.ok[bucket % n] if held else 0
            out.append(Bucket(bucket * self.width, (bucket + 1) * self.width, ok / total if total else None, total))
        return out

    def dump(self) -> bytes:
        """Bucket number per slot (-1 for none), then the totals, then the successes."""
        n = len(self.total)
        ids = array("i", [-1]) * n
        if self.last >= 0:
            for b in range(self.last - n + 1, self.last + 1):
                ids[b % n] = b
        return ids.tobytes() + self.total.tobytes() + self.ok.tobytes()

    def restore(self, data: bytes) -> bool:
        """Fill from :meth:`dump`'s bytes; False (and unchanged) if they do not fit this ring."""
        n = len(self.total)
        sizes = (n * 4, n * self.total.itemsize, n * self.ok.itemsize)
        if len(data) != sum(sizes):
            return False
        ids, total, ok = array("i"), array(self.total.typecode), array(self.ok.typecode)
        ids.frombytes(data[:sizes[0]])
        total.frombytes(data[sizes[0]:sizes[0] + sizes[1]])
        ok.frombytes(data[sizes[0] + sizes[1]:])
        if any(o > t for o, t in zip(ok, total)):
            return False
        last = max(ids)
        for i, b in enumerate(ids):  # a slot whose bucket is not the one the window puts there is empty
            if b < 0 or b % n != i or not last - n < b <= last:
                total[i] = ok[i] = 0
        self.last, self.total, self.ok = last, total, ok
        return True

    def uptime(self, now: float) -> float | None:
        """Probe-weighted share of successes over the last ``slots`` buckets (as
        ``uptime(self.series(now))``, without building the buckets)."""
        if self.last < 0:
            return None
        n = len(self.total)
        current = int(now // self.width)
        total = ok = 0
        for b in range(max(current, self.last) - n + 1, min(current, self.last) + 1):
            if self._held(b):
                total += self.total[b % n]
                ok += self.ok[b % n]
        return ok / total if total else None


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float
    end: float
    ratio: float | None
    """Share of successful probes in the bucket (uptime), or None: no data."""
    probes: int


class History:
    __slots__ = ("day", "quarter", "durations", "times", "ok", "_next", "_base")

    LATENCY_POINTS = 120

    def __init__(self) -> None:
        self.quarter = Ring(96, QUARTER, "H")  # at most 900 s / 14 ms probes per quarter-hour
        self.day = Ring(90, DAY)
        self.durations = array("f", [0.0]) * self.LATENCY_POINTS
        self.times = array("f", [0.0]) * self.LATENCY_POINTS
        """Seconds since ``_base``: a 32-bit float is exact to 2 ms within a day of it."""
        self.ok = array("b", [0]) * self.LATENCY_POINTS
        """1 where the probe at the same position succeeded."""
        self._next = 0
        self._base = 0.0

    def add(self, at: float, success: bool, duration: float) -> None:
        self.quarter.add(at, success)
        self.day.add(at, success)
        if not self._next or at - self._base > DAY:
            self._rebase(at)
        i = self._next % self.LATENCY_POINTS
        self.durations[i], self.times[i], self.ok[i] = duration, at - self._base, 1 if success else 0
        self._next += 1

    def _rebase(self, at: float) -> None:
        if self._next:
            shift = at - self._base
            for i in range(self.LATENCY_POINTS):
                self.times[i] -= shift
        self._base = at

    def dump(self) -> str:
        """The two rings (not the latency points), for the state store: survives a restart.
        Compressed (~1.8 KB of arrays to a few hundred bytes: bucket ids run in sequence and
        counts repeat), so saving 20,000 targets writes megabytes, not tens of them."""
        return "z1:" + base64.b64encode(zlib.compress(self.quarter.dump() + self.day.dump(), 1)).decode()

    @classmethod
    def restored(cls, text: str) -> History | None:
        """A History from :meth:`dump`'s text, or None when it does not fit (another version)."""
        if not text.startswith("z1:"):
            return None
        try:
            data = zlib.decompressobj().decompress(base64.b64decode(text[3:], validate=True), 8192)
        except (ValueError, TypeError, zlib.error):
            return None
        h = cls()
        q = len(h.quarter.dump())
        if not (h.quarter.restore(data[:q]) and h.day.restore(data[q:])):
            return None
        return h

    def recent(self, now: float, window: float) -> tuple[int, int]:
        """(failed, probes) among the last probes that ended within ``window`` seconds of ``now``
        (at most LATENCY_POINTS of them)."""
        n = min(self._next, self.LATENCY_POINTS)
        since = now - window - self._base
        failed = probes = 0
        for j in range(self._next - n, self._next):
            i = j % self.LATENCY_POINTS
            if self.times[i] >= since:
                probes += 1
                failed += 1 - self.ok[i]
        return failed, probes

    def quantiles(self, now: float, window: float, qs: tuple[float, ...]) -> list[float] | None:
        """Exact quantiles (nearest rank: the smallest duration with at least ``q`` of the
        probes at or under it) of the durations of the probes that ended within ``window``
        seconds of ``now`` (at most LATENCY_POINTS of them), or None when there are none."""
        n = min(self._next, self.LATENCY_POINTS)
        since = now - window - self._base
        values = sorted(self.durations[j % self.LATENCY_POINTS] for j in range(self._next - n, self._next)
                        if self.times[j % self.LATENCY_POINTS] >= since)
        if not values:
            return None
        # rank ceil(q * n), q * n rounded first: 0.95 * 20 is 19.000000000000004, not 19
        return [values[max(0, math.ceil(round(q * len(values), 9)) - 1)] for q in qs]

    def recent_quantiles(self, now: float) -> list[float] | None:
        """QUANTILES of the last RECENT_WINDOW: what the latency alerts read, the API shows."""
        return self.quantiles(now, RECENT_WINDOW, QUANTILES)

    def latency(self) -> list[tuple[float, float]]:
        """(time, seconds) of the last probes, oldest first."""
        return [(at, seconds) for at, seconds, _ in self.probes()]

    def probes(self) -> list[tuple[float, float, bool]]:
        """(time, seconds, succeeded) of the last probes (at most LATENCY_POINTS), oldest first."""
        n = min(self._next, self.LATENCY_POINTS)
        out = []
        for j in range(self._next - n, self._next):
            i = j % self.LATENCY_POINTS
            out.append((self._base + self.times[i], self.durations[i], bool(self.ok[i])))
        return out


def uptime(buckets: list[Bucket]) -> float | None:
    """Probe-weighted share of successes over the buckets that have data."""
    total = sum(b.probes for b in buckets)
    if not total:
        return None
    return sum((b.ratio or 0.0) * b.probes for b in buckets) / total
