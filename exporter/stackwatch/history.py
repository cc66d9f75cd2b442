"""Per-target probe history kept in memory, for the status page when no Prometheus is configured.

Two rings of buckets per target: 96 quarter-hours (the 24 h bar) and 90 days (the 90-day bar),
each bucket counting probes and successes, plus the last 120 probe durations for the latency
chart (and whether each succeeded: the recent failure ratio).  Machine numbers in one buffer
per target (day counts as 32-bit integers, quarter-hour counts as 16-bit ones, durations and
durations as 32-bit floats, end times as 32-bit milliseconds): 2.2 KB per target (bench/memory.py).  It covers
the time stackwatch has run: the rings are saved in the state store every few minutes and at
shutdown, and restored at start (stackwatch.app).  With ``--prometheus.url`` the status page
reads history from Prometheus instead, which spans its retention.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from array import array
from dataclasses import dataclass

QUARTER = 900.0
DAY = 86400.0
REBASE_AFTER = 10 * DAY
"""A kept probe time is milliseconds since a base (32 bits: ±24 days), moved on this often."""
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


_LAST = struct.Struct("q")  # native, as the memoryview casts that read the same buffer
_FLOAT = struct.Struct("f")
_MS = struct.Struct("i")


class Ring:
    """``slots`` buckets of ``width`` seconds; old buckets are reused as time moves on.

    Bucket number b (since the epoch) lives in slot b % slots while it is one of the last
    ``slots`` buckets up to the newest one written (``last``); moving on clears the slots in
    between.  One integer per ring instead of a bucket number per slot.

    The ring's numbers live in a buffer (``last``, then the totals, then the successes): its
    own, or a region of a :class:`History`'s single buffer, which makes a Ring a short-lived
    view (one allocation per target for all its history, not nine)."""

    __slots__ = ("width", "total", "ok", "last", "_buf", "_offset")

    def __init__(self, slots: int, width: float, count_type: str = "I",
                 buf: bytearray | None = None, offset: int = 0):
        size = array(count_type).itemsize * slots
        if buf is None:
            buf = bytearray(Ring.size(slots, count_type))
            _LAST.pack_into(buf, 0, -1)
        self.width = width
        self._buf, self._offset = buf, offset
        view = memoryview(buf)
        start = offset + _LAST.size
        self.total = view[start:start + size].cast(count_type)
        self.ok = view[start + size:start + 2 * size].cast(count_type)
        self.last: int = _LAST.unpack_from(buf, offset)[0]
        """The newest bucket written (-1: none yet)."""

    @staticmethod
    def size(slots: int, count_type: str) -> int:
        """Bytes of a ring's region in a buffer."""
        return _LAST.size + 2 * slots * array(count_type).itemsize

    def _set_last(self, bucket: int) -> None:
        self.last = bucket
        _LAST.pack_into(self._buf, self._offset, bucket)

    def _held(self, bucket: int) -> bool:
        return self.last >= 0 and self.last - len(self.total) < bucket <= self.last

    def add(self, at: float, success: bool) -> None:
        self.last = ring_add(self._buf, self._offset, len(self.total), self.width, self.total.format, at, success)

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
        ids, total, ok = array("i"), array(self.total.format), array(self.ok.format)
        ids.frombytes(data[:sizes[0]])
        total.frombytes(data[sizes[0]:sizes[0] + sizes[1]])
        ok.frombytes(data[sizes[0] + sizes[1]:])
        if any(o > t for o, t in zip(ok, total)):
            return False
        last = max(ids)
        for i, b in enumerate(ids):  # a slot whose bucket is not the one the window puts there is empty
            if b < 0 or b % n != i or not last - n < b <= last:
                total[i] = ok[i] = 0
        self.total[:] = total
        self.ok[:] = ok
        self._set_last(last)
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


_COUNTS = {code: struct.Struct(code) for code in ("H", "I")}


def ring_add(buf: bytearray, offset: int, slots: int, width: float, count_type: str, at: float,
             success: bool) -> int:
    """Count a probe in the ring at ``offset`` of ``buf`` (see :class:`Ring`), by struct access
    rather than through a Ring view (the probe path: no view objects per probe); the ring's
    ``last`` after it."""
    bucket = int(at // width)
    last = _LAST.unpack_from(buf, offset)[0]
    count = _COUNTS[count_type]
    size = count.size
    totals = offset + _LAST.size
    oks = totals + slots * size
    if last < 0:
        last = bucket
    elif bucket > last:
        for b in range(last + 1, last + 1 + min(bucket - last, slots)):
            count.pack_into(buf, totals + (b % slots) * size, 0)
            count.pack_into(buf, oks + (b % slots) * size, 0)
        last = bucket
    elif bucket <= last - slots:
        return last  # older than the ring
    _LAST.pack_into(buf, offset, last)
    at_total, at_ok = totals + (bucket % slots) * size, oks + (bucket % slots) * size
    total = count.unpack_from(buf, at_total)[0]
    if total == 2 ** (8 * size) - 1:  # a probe every 14 ms or faster: keep the ratio, stop counting
        return last
    count.pack_into(buf, at_total, total + 1)
    if success:
        count.pack_into(buf, at_ok, count.unpack_from(buf, at_ok)[0] + 1)
    return last


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float
    end: float
    ratio: float | None
    """Share of successful probes in the bucket (uptime), or None: no data."""
    probes: int


class History:
    """A target's history in one buffer: the quarter-hour ring, the day ring, then the last
    LATENCY_POINTS probes' durations, end times and outcomes (2.2 KB; bench/memory.py)."""

    __slots__ = ("_buf", "_next", "_base")

    LATENCY_POINTS = 120
    _QUARTER = (96, QUARTER, "H")  # at most 900 s / 14 ms probes per quarter-hour
    _DAY = (90, DAY, "I")
    _Q_AT = 0
    _D_AT = _Q_AT + Ring.size(96, "H")
    _DURATIONS_AT = _D_AT + Ring.size(90, "I")
    _TIMES_AT = _DURATIONS_AT + 4 * LATENCY_POINTS
    """Milliseconds since ``_base`` (signed 32 bits): exact to the millisecond, however often the
    base moves (a float would lose precision at every move)."""
    _OK_AT = _TIMES_AT + 4 * LATENCY_POINTS
    """1 where the probe at the same position succeeded."""
    _SIZE = _OK_AT + LATENCY_POINTS

    def __init__(self) -> None:
        self._buf = bytearray(self._SIZE)
        _LAST.pack_into(self._buf, self._Q_AT, -1)
        _LAST.pack_into(self._buf, self._D_AT, -1)
        self._next = 0
        self._base = 0.0

    @property
    def quarter(self) -> Ring:
        """The 24 h ring: 96 quarter-hours (a view of this history's buffer)."""
        return Ring(*self._QUARTER, buf=self._buf, offset=self._Q_AT)

    @property
    def day(self) -> Ring:
        """The 90-day ring (a view of this history's buffer)."""
        return Ring(*self._DAY, buf=self._buf, offset=self._D_AT)

    @property
    def durations(self) -> memoryview:
        return memoryview(self._buf)[self._DURATIONS_AT:self._TIMES_AT].cast("f")

    @property
    def times(self) -> memoryview:
        return memoryview(self._buf)[self._TIMES_AT:self._OK_AT].cast("i")

    @property
    def ok(self) -> memoryview:
        return memoryview(self._buf)[self._OK_AT:self._SIZE].cast("b")

    def add(self, at: float, success: bool, duration: float) -> None:
        ring_add(self._buf, self._Q_AT, *self._QUARTER, at, success)
        ring_add(self._buf, self._D_AT, *self._DAY, at, success)
        if not self._next or at - self._base > REBASE_AFTER:
            self._rebase(at)
        i = self._next % self.LATENCY_POINTS
        buf = self._buf
        _FLOAT.pack_into(buf, self._DURATIONS_AT + 4 * i, duration)
        _MS.pack_into(buf, self._TIMES_AT + 4 * i, round((at - self._base) * 1000))
        buf[self._OK_AT + i] = 1 if success else 0
        self._next += 1

    def _rebase(self, at: float) -> None:
        """Move the base to ``at`` (whole milliseconds, so kept times shift exactly); a point
        older than ~24 days then reads as that old (the 32-bit floor)."""
        if self._next:
            shift = round((at - self._base) * 1000)
            times = self.times
            for i in range(self.LATENCY_POINTS):
                times[i] = max(-2**31, times[i] - shift)
            self._base += shift / 1000
        else:
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
        since = (now - window - self._base) * 1000
        times, ok = self.times, self.ok
        failed = probes = 0
        for j in range(self._next - n, self._next):
            i = j % self.LATENCY_POINTS
            if times[i] >= since:
                probes += 1
                failed += 1 - ok[i]
        return failed, probes

    def quantiles(self, now: float, window: float, qs: tuple[float, ...]) -> list[float] | None:
        """Exact quantiles (nearest rank: the smallest duration with at least ``q`` of the
        probes at or under it) of the durations of the probes that ended within ``window``
        seconds of ``now`` (at most LATENCY_POINTS of them), or None when there are none."""
        n = min(self._next, self.LATENCY_POINTS)
        since = (now - window - self._base) * 1000
        durations, times = self.durations, self.times
        values = sorted(durations[j % self.LATENCY_POINTS] for j in range(self._next - n, self._next)
                        if times[j % self.LATENCY_POINTS] >= since)
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
        durations, times, ok = self.durations, self.times, self.ok
        out = []
        for j in range(self._next - n, self._next):
            i = j % self.LATENCY_POINTS
            out.append((self._base + times[i] / 1000, durations[i], bool(ok[i])))
        return out


def uptime(buckets: list[Bucket]) -> float | None:
    """Probe-weighted share of successes over the buckets that have data."""
    total = sum(b.probes for b in buckets)
    if not total:
        return None
    return sum((b.ratio or 0.0) * b.probes for b in buckets) / total
