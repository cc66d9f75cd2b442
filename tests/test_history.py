"""The status page's in-memory uptime rings: the same buckets as the straightforward layout (a
bucket number per slot) whatever the gaps between probes, and saved and restored unchanged."""

from __future__ import annotations

import random

import pytest

from stackwatch.history import History, Ring, uptime


class Reference:
    """A bucket number kept per slot: the layout the ring replaces, as the oracle."""

    def __init__(self, slots: int, width: float):
        self.n, self.width = slots, width
        self.ids, self.total, self.ok = [-1] * slots, [0] * slots, [0] * slots

    def add(self, at: float, success: bool) -> None:
        b = int(at // self.width)
        i = b % self.n
        if self.ids[i] != b:
            self.ids[i], self.total[i], self.ok[i] = b, 0, 0
        self.total[i] += 1
        self.ok[i] += success

    def series(self, now: float) -> list[tuple[int, int]]:
        last = int(now // self.width)
        return [(self.total[b % self.n], self.ok[b % self.n]) if self.ids[b % self.n] == b else (0, 0)
                for b in range(last - self.n + 1, last + 1)]


@pytest.mark.parametrize("seed", range(100))
def test_ring_matches_the_reference_and_survives_a_dump(seed):
    rng = random.Random(seed)
    slots, width = rng.choice([(5, 1.0), (96, 900.0), (90, 86400.0)])
    ring, ref = Ring(slots, width), Reference(slots, width)
    t = 1_800_000_000.0
    for _ in range(rng.randint(0, 300)):
        t += rng.choice([0.1, width / 2, width, 3 * width, 2 * slots * width]) * rng.random()
        ok = rng.random() < 0.8
        ring.add(t, ok)
        ref.add(t, ok)
    now = t + rng.choice([0.0, width, width * slots / 2, 3 * width * slots])
    got = [(b.probes, round((b.ratio or 0) * b.probes)) for b in ring.series(now)]
    assert got == ref.series(now)
    u, expected = ring.uptime(now), uptime(ring.series(now))
    assert (u is None and expected is None) or u == pytest.approx(expected)
    again = Ring(slots, width)
    assert again.restore(ring.dump())
    assert [(b.probes, b.ratio) for b in again.series(now)] == [(b.probes, b.ratio) for b in ring.series(now)]


def test_a_dump_that_does_not_fit_is_refused():
    ring = Ring(96, 900.0, "H")
    ring.add(1_800_000_000.0, True)
    data = ring.dump()
    assert not Ring(90, 900.0, "H").restore(data)  # another size
    n = 96
    ids, total = data[: 4 * n], data[4 * n: 6 * n]
    more_ok_than_probes = ids + total + bytes(x + 1 if i % 2 == 0 else x for i, x in enumerate(total))
    target = Ring(96, 900.0, "H")
    assert not target.restore(more_ok_than_probes) and target.last == -1  # refused, unchanged
    assert target.restore(data) and target.uptime(1_800_000_000.0) == 1.0


@pytest.mark.parametrize("seed", range(20))
def test_a_targets_history_in_one_buffer_keeps_what_separate_rings_keep(seed):
    """History packs both rings and the last probes into one buffer per target: its rings give
    what standalone rings fed the same probes give, its last probes are the last 120 added (times
    to the millisecond), and a dump restores the rings."""
    rng = random.Random(seed)
    h, quarter, day = History(), Ring(96, 900.0, "H"), Ring(90, 86400.0)
    added: list[tuple[float, float, bool]] = []
    t = 1_800_000_000.0
    for _ in range(rng.randint(1, 400)):
        t += rng.choice([0.5, 15.0, 900.0, 86400.0, 3 * 86400.0]) * rng.random()
        ok, seconds = rng.random() < 0.9, round(rng.random() * 3, 3)
        h.add(t, ok, seconds)
        quarter.add(t, ok)
        day.add(t, ok)
        added.append((t, seconds, ok))
    for mine, ref in ((h.quarter, quarter), (h.day, day)):
        assert [(b.probes, b.ratio) for b in mine.series(t)] == [(b.probes, b.ratio) for b in ref.series(t)]
    got = h.probes()
    want = added[-History.LATENCY_POINTS:]
    assert [ok for _, _, ok in got] == [ok for _, _, ok in want]
    for (a, s, _), (b, w, _) in zip(got, want):
        assert abs(s - w) < 1e-6
        if b >= t - 24 * 86400:  # kept as signed 32-bit ms since a base: exact within 24.8 days
            assert abs(a - b) <= 0.0005 + 1e-9 * a
        else:  # older: exact, or read as the oldest time the 32 bits hold
            assert abs(a - b) <= 0.0005 + 1e-9 * a or b < a <= t - 2**31 / 1000 + 1
    again = History.restored(h.dump())
    assert again is not None
    assert [(b.probes, b.ratio) for b in again.day.series(t)] == [(b.probes, b.ratio) for b in day.series(t)]
    assert [(b.probes, b.ratio) for b in again.quarter.series(t)] == [(b.probes, b.ratio) for b in quarter.series(t)]
