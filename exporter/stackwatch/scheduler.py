"""The asyncio scheduler: every target on its own interval, spread out, bounded, never overlapping.

* Due times live in one heap behind one timer.  A waiting target costs a heap entry, not a
  sleeping task: at 10k targets, 10k sleeping tasks (with their futures, timer handles and
  contexts) made every full garbage collection take ~200 ms and stalled the loop.
* Start times are spread over the interval by a stable hash of the target name (as Prometheus
  spreads scrapes), so 10k targets never start at once.
* A global semaphore bounds probes in flight (and a kind may set a lower bound of its own).
  The latency timer and the deadline start after a slot is acquired; the wait for the slot
  is scheduler lag, exported as its own histogram.
* A target's next run is put in the heap only when its run ends: no overlap.  A slot that
  passed during a run starts late; slots missed by a whole interval are skipped, not queued.
* Single flight per target: a run asked for while one of the same target is in flight (a
  ``/probe`` call, or the schedule while a ``/probe`` runs) joins that run and gets its result,
  so callers can neither double the load on a target nor make its scheduled probe fail.
  ``/probe`` goes through the same global and per-kind bounds, with a bounded number of callers
  waiting (past it: :class:`Busy`, a 503).
* One probe never delays another target: each run is its own task, and the deadline holds.
  This relies on probes never blocking the event loop: blocking clients (SQLAlchemy drivers,
  py-algorand-sdk) run in thread pools with their own deadlines (probes/sqldb.py, probes/algorand.py).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import zlib
from collections.abc import Callable

from stackwatch.buckets import Buckets
from stackwatch.config import Config, SchedulerSettings, TargetConfig
from stackwatch.probes.base import ProbeResult
from stackwatch.runner import Probers

log = logging.getLogger("stackwatch.scheduler")

BURST = 8
"""Probe starts batched into one wake-up, at most (on average): the scheduler's tick is the time
in which this many starts fall due, between MIN_TICK and MAX_TICK."""
MIN_TICK, MAX_TICK = 0.001, 0.05
TICK_OVERRIDE = os.environ.get("STACKWATCH_SCHEDULER_TICK")


def tick_for(rate: float) -> float:
    """Probe starts are batched on a grid: one wake-up for about BURST starts instead of one
    each.  A wake-up of a mostly idle process runs on cold caches, so batching costs less CPU
    per probe; bigger batches would make the targets see bursts, which shows in the latencies
    they answer with (measured trade-off in bench/RESULTS.md).  Latencies are timed in the
    protocol callbacks; a start moves by less than one tick, and the lag histogram counts from
    the tick.  ``rate``: scheduled probes per second."""
    if TICK_OVERRIDE:
        return float(TICK_OVERRIDE)
    return min(MAX_TICK, max(MIN_TICK, BURST / rate)) if rate > 0 else MAX_TICK


LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Busy(Exception):
    """Too many /probe callers are waiting already."""


def spread(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for a target, so restarts keep the same phase."""
    return (zlib.crc32(name.encode()) / 2**32) * interval


class _Entry:
    """A scheduled target.  ``active`` turns False when a reload removes or changes it."""

    __slots__ = ("target", "interval", "active", "previous", "task")

    def __init__(self, target: TargetConfig):
        self.target = target
        self.interval = target.every
        self.active = True
        self.previous: bool | None = None
        self.task: asyncio.Task[None] | None = None


class Scheduler:
    def __init__(self, probers: Probers, on_result: Callable[[str, ProbeResult], None],
                 settings: SchedulerSettings):
        self.probers = probers
        self._on_result = on_result
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._settings = settings
        self._global = asyncio.Semaphore(settings.max_concurrent_probes)
        self._per_kind: dict[str, asyncio.Semaphore] = {}
        self.in_flight = 0
        self._running: dict[str, tuple[TargetConfig, bool, asyncio.Future[ProbeResult]]] = {}
        self.probe_callers = 0
        self.max_probe_callers = max(16, 2 * settings.max_concurrent_probes)
        self.probe_refused = 0
        self.joined = 0
        self.lag = Buckets(LAG_BUCKETS)
        """stackwatch_scheduler_lag_seconds."""
        self.skipped = 0
        self.tick = MAX_TICK

    def apply(self, config: Config) -> None:
        """Start, stop or restart targets so they match the config; unchanged targets keep their schedule."""
        if config.scheduler != self._settings:
            self._settings = config.scheduler
            self._global = asyncio.Semaphore(config.scheduler.max_concurrent_probes)
        loop = asyncio.get_running_loop()
        wanted = {t.name: t for t in config.targets}
        self.tick = tick_for(sum(1.0 / t.every for t in config.targets))
        for name, entry in list(self._entries.items()):
            if wanted.get(name) != entry.target:
                entry.active = False
                if entry.task is not None:
                    entry.task.cancel()
                del self._entries[name]
        now = loop.time()
        for name, target in wanted.items():
            if name not in self._entries:
                entry = self._entries[name] = _Entry(target)
                self._push(now + spread(name, entry.interval), entry)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for e in self._entries.values():
            e.active = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self._heap.clear()

    # ----------------------------------------------------------------- timing

    def _push(self, at: float, entry: _Entry) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, entry))
        if at < self._timer_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        at = math.ceil(at / self.tick) * self.tick  # one wake-up per tick for every start due in it
        if self._timer is not None:
            if at >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, entry = heapq.heappop(heap)
            if entry.active:
                entry.task = loop.create_task(self._run(entry, at))
        if heap:
            self._arm(heap[0][0])

    async def _run(self, entry: _Entry, planned: float) -> None:
        target = entry.target
        try:
            result = await self.run_once(target, planned=planned)
        except asyncio.CancelledError:
            return
        finally:
            entry.task = None
        if not entry.active:
            return
        self._on_result(target.name, result)
        if result.success != entry.previous:
            if result.success:
                log.info("target up", extra={"target": target.name, "duration_seconds": round(result.duration, 4)})
            else:
                log.warning("target down", extra={"target": target.name, "reason": result.reason,
                                                  "error": result.message})
            entry.previous = result.success
        next_at = planned + entry.interval
        behind = asyncio.get_running_loop().time() - next_at
        if behind >= entry.interval:
            missed = int(behind // entry.interval)
            self.skipped += missed
            next_at += missed * entry.interval
        self._push(next_at, entry)

    def _kind_gate(self, kind: str) -> asyncio.Semaphore | None:
        limit = self.probers.kinds[kind].max_concurrent
        if limit is None:
            return None
        gate = self._per_kind.get(kind)
        if gate is None:
            gate = self._per_kind[kind] = asyncio.Semaphore(limit)
        return gate

    async def run_once(self, target: TargetConfig, planned: float | None = None, verbose: bool = False) -> ProbeResult:
        """One run of a target through the bounds, or the run already in flight for it."""
        running = self._running.get(target.name)
        if running is not None and running[0] == target and (running[1] or not verbose):
            self.joined += 1
            return await self._join(target, running[2])
        if running is not None:
            # A different config (mid-reload) or a debug run wanting its own log: never overlap
            # two runs of one target; wait for the one in flight to end, then run.
            await asyncio.wait([running[2]])
            return await self.run_once(target, planned, verbose)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ProbeResult] = loop.create_future()
        self._running[target.name] = (target, verbose, future)
        try:
            result = await self._gated(target, planned, verbose)
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._running.get(target.name, (None, None, None))[2] is future:
                del self._running[target.name]
        future.set_result(result)
        return result

    async def _join(self, target: TargetConfig, future: asyncio.Future[ProbeResult]) -> ProbeResult:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # this caller was cancelled, not the run it joined
        return await self.run_once(target)

    async def probe(self, target: TargetConfig, verbose: bool) -> ProbeResult:
        """A ``/probe`` call: through the same bounds and single flight as scheduled runs."""
        if self.probe_callers >= self.max_probe_callers:
            self.probe_refused += 1
            raise Busy(f"{self.probe_callers} /probe calls are already waiting")
        self.probe_callers += 1
        try:
            return await self.run_once(target, verbose=verbose)
        finally:
            self.probe_callers -= 1

    async def _gated(self, target: TargetConfig, planned: float | None, verbose: bool) -> ProbeResult:
        loop = asyncio.get_running_loop()
        gate = self._kind_gate(target.kind)
        sem = self._global
        async with sem:
            if gate is not None:
                await gate.acquire()
            try:
                if planned is not None:
                    self._observe_lag(max(0.0, loop.time() - math.ceil(planned / self.tick) * self.tick))
                self.in_flight += 1
                try:
                    return await self.probers.run(target, verbose=verbose)
                finally:
                    self.in_flight -= 1
            finally:
                if gate is not None:
                    gate.release()

    def _observe_lag(self, lag: float) -> None:
        self.lag.observe(lag)
