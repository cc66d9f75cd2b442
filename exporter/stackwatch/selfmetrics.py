"""stackwatch's own series: build, reloads, scheduler, connections, GC, ``process_*``, ``python_*``.

A prometheus_client registry of their own, rendered with its exposition functions (a few dozen
series: its cost does not matter).  Values that live in the running exporter are read at scrape
time through :class:`Running`, the part of the exporter this module may see.
"""

from __future__ import annotations

import asyncio
import gc
import platform
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics import exposition as om_exposition

from stackwatch import __version__
from stackwatch.buckets import Buckets
from stackwatch.scheduler import LAG_BUCKETS

if TYPE_CHECKING:
    from stackwatch.config import Config
    from stackwatch.listener import Stats
    from stackwatch.runner import Probers
    from stackwatch.scheduler import Scheduler
    from stackwatch.webconfig import BasicAuthChecker

prometheus_client.disable_created_metrics()


class Running(Protocol):
    """What the self metrics read from the running exporter (stackwatch.app.Exporter)."""

    config: Config
    probers: Probers
    scheduler: Scheduler | None
    shard: tuple[int, int]
    listener_stats: Stats
    auth: BasicAuthChecker
    gc_pauses: GCPauses
    gc_baseline: int
    gc_grown: int
    gc_sweeps: int


class SelfMetrics:
    """stackwatch's own series, in a prometheus_client registry of their own."""

    def __init__(self, exporter: Running) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        prometheus_client.GCCollector(registry=self.registry)
        build = Gauge("stackwatch_build_info", "stackwatch's version and Python version (value 1).",
                      ["version", "python_version"], registry=self.registry)
        build.labels(__version__, platform.python_version()).set(1)
        self.reload_ok = Gauge("stackwatch_config_last_reload_successful", "1 if the last config (re)load succeeded.",
                               registry=self.registry)
        self.reload_ok.set(1)
        self.reload_at = Gauge("stackwatch_config_last_reload_success_timestamp_seconds",
                               "When the config was last loaded successfully, as a Unix timestamp.",
                               registry=self.registry)
        self.reload_at.set(time.time())
        self.reload_failures = Counter("stackwatch_config_reload_failures",
                                       "Config reloads rejected since start.", registry=self.registry)
        self.registry.register(LiveCollector(exporter))

    def render(self, openmetrics: bool) -> bytes:
        if openmetrics:
            body = om_exposition.generate_latest(self.registry)
            return body.removesuffix(b"# EOF\n")
        return prometheus_client.generate_latest(self.registry)


GC_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class GCPauses:
    """Durations of the cyclic garbage collector's passes, by generation (gc.callbacks).  A pass
    stops the event loop: a response arriving meanwhile is timed late by up to its length."""

    def __init__(self) -> None:
        self.passes = [Buckets(GC_BUCKETS) for _ in range(3)]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.passes[min(2, info.get("generation", 0))].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily("stackwatch_gc_pause_seconds",
                                    "Passes of Python's cyclic garbage collector by generation (they pause probing).",
                                    labels=["generation"])
        for gen, passes in enumerate(self.passes):
            fam.add_metric([str(gen)], passes.cumulative(), passes.sum)
        return fam


def running_loop_name() -> str:
    """uvloop or asyncio: the loop this thread runs ("none" outside one)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return "uvloop" if type(running).__module__.startswith("uvloop") else "asyncio"


class LiveCollector:
    """Values read at scrape time from the running exporter (targets, scheduler)."""

    def __init__(self, exporter: Running) -> None:
        self.ex = exporter

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterable[object]:
        ex = self.ex
        targets = GaugeMetricFamily("stackwatch_targets", "Configured targets by probe kind.", labels=["kind"])
        counts: dict[str, int] = {k: 0 for k in ex.probers.kinds}
        for t in ex.config.targets:
            counts[t.kind] = counts.get(t.kind, 0) + 1
        for kind, n in sorted(counts.items()):
            targets.add_metric([kind], n)
        yield targets
        index, count = ex.shard
        shard = GaugeMetricFamily("stackwatch_shard_info",
                                  "This replica's shard: it probes the targets whose name hashes to index, of count.",
                                  labels=["index", "count"])
        shard.add_metric([str(index), str(count)], 1)
        yield shard
        loop = GaugeMetricFamily("stackwatch_event_loop_info", "The event loop this process runs on (--event-loop).",
                                 labels=["loop"])
        loop.add_metric([running_loop_name()], 1)
        yield loop
        sched = ex.scheduler
        yield GaugeMetricFamily("stackwatch_probes_in_flight", "Probes running right now.",
                                value=sched.in_flight if sched else 0)
        skipped = CounterMetricFamily(
            "stackwatch_scheduler_skipped_runs",
            "Scheduled probe runs skipped because the previous run of the target ended late.",
            value=sched.skipped if sched else 0)
        yield skipped
        lag = sched.lag if sched else Buckets(LAG_BUCKETS)
        stuck = GaugeMetricFamily("stackwatch_blocking_calls_stuck",
                                  "Blocking client calls (SQL drivers, Algorand SDK) abandoned at their deadline "
                                  "whose thread is still running.", labels=["kind"])
        abandoned = CounterMetricFamily(
            "stackwatch_blocking_calls_abandoned",
            "Blocking client calls abandoned at their probe's deadline (capacity is not lost to them).",
            labels=["kind"])
        for kind, state in sorted(ex.probers.states.items()):
            runner = getattr(state, "runner", None)
            if runner is not None:
                stuck.add_metric([kind], runner.stuck)
                abandoned.add_metric([kind], runner.abandoned_total)
        yield stuck
        yield abandoned
        if sched is not None:
            yield CounterMetricFamily(
                "stackwatch_probe_requests_joined",
                "Runs that joined a run of the same target already in flight (single flight).", value=sched.joined)
            yield CounterMetricFamily(
                "stackwatch_probe_requests_refused",
                "/probe calls refused with 503 because too many were waiting.", value=sched.probe_refused)
        web = ex.listener_stats
        yield GaugeMetricFamily("stackwatch_http_connections_open",
                                "Connections open to stackwatch's own HTTP server.", value=web.open)
        yield CounterMetricFamily(
            "stackwatch_http_connections_refused",
            "Connections closed at accept because the connection limit was reached.", value=web.refused)
        yield CounterMetricFamily(
            "stackwatch_http_header_timeouts",
            "Connections closed because a request head did not arrive in time.", value=web.header_timeouts)
        yield CounterMetricFamily(
            "stackwatch_http_accept_errors",
            "Connections that could not be accepted for want of file descriptors or memory.",
            value=web.accept_errors)
        auth = ex.auth
        yield CounterMetricFamily("stackwatch_http_auth_failures",
                                  "Requests refused for missing or wrong basic auth credentials.",
                                  value=auth.failures)
        yield CounterMetricFamily("stackwatch_http_auth_busy",
                                  "Requests answered 429 because too many logins were being checked.",
                                  value=auth.busy)
        pauses = ex.gc_pauses
        yield pauses.family()
        yield GaugeMetricFamily("stackwatch_gc_frozen_objects",
                                "Objects moved to the garbage collector's permanent generation (long-lived, "
                                "never scanned; a full sweep runs when they grow), counted as they are frozen.",
                                value=ex.gc_baseline + ex.gc_grown)
        yield CounterMetricFamily("stackwatch_gc_sweeps",
                                  "Full garbage-collector sweeps over the frozen objects too.",
                                  value=ex.gc_sweeps)
        yield HistogramMetricFamily(
            "stackwatch_scheduler_lag_seconds",
            "Delay between a probe's planned start and the moment it got a concurrency slot.",
            buckets=lag.cumulative(), sum_value=lag.sum)
