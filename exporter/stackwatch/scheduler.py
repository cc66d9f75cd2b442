"""The asyncio scheduler: every target on its own interval, spread out, bounded, never overlapping.

* Each target runs in its own task, so one target can never delay another's timing.
* Start times are spread over the interval by a stable hash of the target name (as Prometheus
  spreads scrapes), so 10k targets never start at once.
* A global semaphore bounds probes in flight (and a kind may set a lower bound of its own).
  The latency timer and the deadline start after a slot is acquired; the wait for the slot
  is scheduler lag, exported as its own histogram.
* A run of a target is awaited before its next run is scheduled: no overlap.  A slot that
  passed during a run starts late; slots missed by a whole interval are skipped, not queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable

from stackwatch.config import Config, SchedulerSettings, TargetConfig
from stackwatch.probes import registry
from stackwatch.probes.base import ProbeContext, ProbeFailure, ProbeResult, Reason
from stackwatch.redact import scrub

log = logging.getLogger("stackwatch.scheduler")

LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


async def run_probe(target: TargetConfig) -> ProbeResult:
    """Run one probe of a target under its hard deadline; always returns a ProbeResult."""
    kind = registry()[target.kind]
    timeout = float(target.timeout or 5.0)
    ctx = ProbeContext(target, timeout)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            result = await kind.probe(target, ctx)
        if not isinstance(result, ProbeResult):
            result = ctx.failure(Reason.INTERNAL, f"probe returned {type(result).__name__}, not a ProbeResult")
    except TimeoutError:
        result = ctx.failure(Reason.TIMEOUT, f"no result within the timeout of {timeout:g}s")
    except ProbeFailure as exc:
        result = ctx.failure(exc.reason, exc.message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a broken probe must not reach the scheduler
        log.debug("probe %s raised", target.name, exc_info=True)
        result = ctx.failure(Reason.INTERNAL, f"probe raised {type(exc).__name__}: {scrub(str(exc), target.secrets())}")
    result.duration = time.perf_counter() - started
    result.finished_at = time.time()
    return result


def spread(name: str, interval: float) -> float:
    """A stable offset in [0, interval) for a target, so restarts keep the same phase."""
    return (zlib.crc32(name.encode()) / 2**32) * interval


class Scheduler:
    def __init__(self, on_result: Callable[[str, ProbeResult], None], settings: SchedulerSettings):
        self._on_result = on_result
        self._tasks: dict[str, tuple[TargetConfig, asyncio.Task[None]]] = {}
        self._settings = settings
        self._global = asyncio.Semaphore(settings.max_concurrent_probes)
        self._per_kind: dict[str, asyncio.Semaphore] = {}
        self.in_flight = 0
        self.lag_buckets = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_sum = 0.0
        self.skipped = 0

    def apply(self, config: Config) -> None:
        """Start, stop or restart target tasks so they match the config; unchanged targets keep running."""
        if config.scheduler != self._settings:
            self._settings = config.scheduler
            self._global = asyncio.Semaphore(config.scheduler.max_concurrent_probes)
        wanted = {t.name: t for t in config.targets}
        for name, (target, task) in list(self._tasks.items()):
            if wanted.get(name) != target:
                task.cancel()
                del self._tasks[name]
        for name, target in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._loop(target), name=f"probe:{name}")
                self._tasks[name] = (target, task)

    async def stop(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _kind_gate(self, kind: str) -> asyncio.Semaphore | None:
        limit = registry()[kind].max_concurrent
        if limit is None:
            return None
        gate = self._per_kind.get(kind)
        if gate is None:
            gate = self._per_kind[kind] = asyncio.Semaphore(limit)
        return gate

    async def run_once(self, target: TargetConfig, planned: float | None = None) -> ProbeResult:
        loop = asyncio.get_running_loop()
        gate = self._kind_gate(target.kind)
        sem = self._global
        async with sem:
            if gate is not None:
                await gate.acquire()
            try:
                if planned is not None:
                    self._observe_lag(max(0.0, loop.time() - planned))
                self.in_flight += 1
                try:
                    return await run_probe(target)
                finally:
                    self.in_flight -= 1
            finally:
                if gate is not None:
                    gate.release()

    def _observe_lag(self, lag: float) -> None:
        i = 0
        while i < len(LAG_BUCKETS) and lag > LAG_BUCKETS[i]:
            i += 1
        self.lag_buckets[i] += 1
        self.lag_sum += lag

    async def _loop(self, target: TargetConfig) -> None:
        loop = asyncio.get_running_loop()
        interval = float(target.interval or 15.0)
        next_at = loop.time() + spread(target.name, interval)
        previous: bool | None = None
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            result = await self.run_once(target, planned=next_at)
            self._on_result(target.name, result)
            if result.success != previous:
                if result.success:
                    log.info("target up", extra={"target": target.name, "duration_seconds": round(result.duration, 4)})
                else:
                    log.warning("target down", extra={"target": target.name, "reason": result.reason,
                                                      "error": result.message})
                previous = result.success
            next_at += interval
            # A run that used its whole timeout (<= interval) ends just after the next slot: that
            # slot still runs, late.  Only slots missed by a whole interval or more are skipped.
            behind = loop.time() - next_at
            if behind >= interval:
                missed = int(behind // interval)
                self.skipped += missed
                next_at += missed * interval
