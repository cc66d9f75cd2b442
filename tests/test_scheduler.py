"""The scheduler: misbehaving probes become failed results and never disturb other targets.

The probe kinds here ("raises", "hangs", "garbage", "sleepy") are test doubles registered for
these tests only: they stand for buggy probe code, which no real server can produce on demand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import pytest
from stackwatch.series import Lines, base_labels
from stackwatch.store import Store
from stackwatch.config import TargetConfig
from stackwatch.kinds import builtin_kinds
from stackwatch.kinds import parse_config as parse_builtin
from stackwatch.probes.base import ProbeContext, ProbeKind
from stackwatch.runner import Probers
from stackwatch.scheduler import LAG_BUCKETS, Scheduler, spread


class FakeTarget(TargetConfig):
    kind: Literal["raises", "hangs", "garbage", "sleepy", "blocking_cancel"]
    sleep: float = 0.0


running: dict[str, int] = {}
max_running: dict[str, int] = {}


async def _raises(t: FakeTarget, ctx: ProbeContext):
    raise KeyError("boom")


async def _hangs(t: FakeTarget, ctx: ProbeContext):
    await asyncio.Event().wait()


async def _garbage(t: FakeTarget, ctx: ProbeContext):
    return {"success": True}


async def _sleepy(t: FakeTarget, ctx: ProbeContext):
    running[t.name] = running.get(t.name, 0) + 1
    max_running[t.name] = max(max_running.get(t.name, 0), running[t.name])
    try:
        await asyncio.sleep(t.sleep)
    finally:
        running[t.name] -= 1
    return ctx.success()


KINDS = {**builtin_kinds(), **{name: ProbeKind(name, FakeTarget, fn) for name, fn in
                                (("raises", _raises), ("hangs", _hangs), ("garbage", _garbage), ("sleepy", _sleepy))}}


@pytest.fixture(autouse=True)
def reset_counters():
    running.clear()
    max_running.clear()


def config(targets: str, concurrency: int = 64):
    return parse_builtin(f"scheduler: {{max_concurrent_probes: {concurrency}}}\ntargets:\n{targets}", kinds=KINDS)


async def run_probe(target):
    return await Probers(KINDS).run(target)


def new_store():
    return Store(base_labels, Lines().keep)


def new_scheduler(on_result, settings):
    return Scheduler(Probers(KINDS), on_result, settings)


@pytest.mark.parametrize("kind,reason,message", [
    ("raises", "internal_error", "probe raised KeyError: 'boom'"),
    ("hangs", "timeout", "no result within the timeout of 0.2s"),
    ("garbage", "internal_error", "probe returned dict, not a ProbeResult"),
])
async def test_misbehaving_probe_becomes_a_failed_result(kind, reason, message):
    t = config(f"  - {{name: x, kind: {kind}, timeout: 200ms}}\n").targets[0]
    r = await run_probe(t)
    assert (r.success, r.reason.value, r.message) == (False, reason, message)
    assert r.duration < 0.5


async def test_bad_targets_do_not_stop_or_delay_good_ones():
    cfg = config("""  - {name: raises, kind: raises, interval: 200ms, timeout: 100ms}
  - {name: hangs, kind: hangs, interval: 200ms, timeout: 200ms}
  - {name: garbage, kind: garbage, interval: 200ms}
  - {name: good, kind: sleepy, interval: 200ms, sleep: 0.001}
""")
    store = new_store()
    store.set_targets(cfg)
    sched = new_scheduler(store.record, cfg.scheduler)
    sched.apply(cfg)
    await asyncio.sleep(1.3)
    await sched.stop()
    states = store.states
    # Every target kept being probed on its 200 ms interval (about 6 runs in 1.3 s, minus the spread offset).
    for name in ("raises", "hangs", "garbage", "good"):
        s = states[name]
        assert 3 <= s.successes + s.failures <= 8, (name, s.successes, s.failures)
    assert states["good"].failures == 0
    assert states["hangs"].by_reason == {"timeout": states["hangs"].failures}
    # The hanging target's 200 ms timeouts never delayed the other targets' starts: a hang that
    # blocked the loop would start most runs 100-200 ms late.  (One late start is allowed: a busy
    # neighbour on a loaded machine can stall any process once; none is 250 ms late.)
    late = sum(n for bound, n in zip((*LAG_BUCKETS, float("inf")), sched.lag.counts) if bound > 0.1)
    very_late = sum(n for bound, n in zip((*LAG_BUCKETS, float("inf")), sched.lag.counts) if bound > 0.25)
    assert late <= 1 and very_late == 0, list(zip(LAG_BUCKETS, sched.lag.counts))


async def test_no_overlapping_runs_of_one_target():
    cfg = config("  - {name: slow, kind: sleepy, interval: 100ms, timeout: 100ms, sleep: 0.09}\n")
    store = new_store()
    store.set_targets(cfg)
    sched = new_scheduler(store.record, cfg.scheduler)
    sched.apply(cfg)
    await asyncio.sleep(0.8)
    await sched.stop()
    assert max_running["slow"] == 1
    assert store.states["slow"].successes >= 5


async def test_global_concurrency_bound_is_respected():
    targets = "".join(f"  - {{name: t{i}, kind: sleepy, interval: 1s, timeout: 1s, sleep: 0.2}}\n" for i in range(20))
    cfg = config(targets, concurrency=3)
    store = new_store()
    store.set_targets(cfg)
    sched = new_scheduler(store.record, cfg.scheduler)
    peak = 0

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, sched.in_flight)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    sched.apply(cfg)
    await asyncio.sleep(1.5)
    watcher.cancel()
    await sched.stop()
    assert peak == 3
    # Waiting for a slot is measured as scheduler lag, not as probe latency.
    assert sched.lag.sum > 0
    assert all(0.19 < (s.duration_sum / max(1, s.successes)) < 0.3 for s in store.states.values() if s.successes)


def test_start_times_are_spread_over_the_interval():
    offsets = sorted(spread(f"target-{i}", 15.0) for i in range(1000))
    assert 0 <= offsets[0] and offsets[-1] < 15.0
    # No second of the interval holds more than twice its fair share of starts.
    per_second = [sum(1 for o in offsets if s <= o < s + 1) for s in range(15)]
    assert max(per_second) < 2 * 1000 / 15
    assert spread("same", 15.0) == spread("same", 15.0)  # stable across restarts


async def test_timeout_is_measured_from_slot_not_from_queue():
    """A probe that waited for a slot still gets its whole timeout."""
    cfg = config("""  - {name: a, kind: sleepy, interval: 2s, timeout: 300ms, sleep: 0.25}
  - {name: b, kind: sleepy, interval: 2s, timeout: 300ms, sleep: 0.25}
""", concurrency=1)
    sched = new_scheduler(lambda n, r: None, cfg.scheduler)
    a, b = cfg.targets
    started = time.monotonic()
    ra, rb = await asyncio.gather(sched.run_once(a, planned=asyncio.get_running_loop().time()),
                                  sched.run_once(b, planned=asyncio.get_running_loop().time()))
    assert ra.success and rb.success  # b waited 250 ms for the slot, then had its full 300 ms
    assert time.monotonic() - started > 0.45


def test_the_tick_batches_about_a_burst_of_starts():
    from stackwatch.scheduler import BURST, MAX_TICK, MIN_TICK, tick_for

    assert tick_for(10_000 / 15) == pytest.approx(BURST / (10_000 / 15))  # 12 ms at 10k targets / 15 s
    assert tick_for(5) == MAX_TICK and tick_for(0) == MAX_TICK  # few targets: starts move by < 50 ms
    assert tick_for(1_000_000) == MIN_TICK


async def test_starts_due_within_one_tick_share_one_wake_up():
    # 200 targets at 1 s: 200 starts/s, a tick of 40 ms, so about 25 wake-ups a second, not 200;
    # and every target still runs once per interval.
    targets = "".join(f"  - {{name: t{i}, kind: sleepy, interval: 1s, sleep: 0}}\n" for i in range(200))
    cfg = config(targets)
    store = new_store()
    store.set_targets(cfg)
    sched = new_scheduler(store.record, cfg.scheduler)
    fired = 0
    original = sched._fire

    def counting() -> None:
        nonlocal fired
        fired += 1
        original()

    sched._fire = counting  # type: ignore[method-assign]
    sched.apply(cfg)
    assert sched.tick == pytest.approx(0.04)
    await asyncio.sleep(2.05)
    await sched.stop()
    runs = sum(s.successes for s in store.states.values())
    assert 350 <= runs <= 420, runs
    assert fired <= 2.05 / 0.04 + 3, fired
    assert sched.lag.sum / max(1, runs) < 0.01  # lag counts from the tick: batching is not lag
