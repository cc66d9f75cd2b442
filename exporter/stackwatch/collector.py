"""Exposition: everything that turns state into a /metrics or /probe body.

* Per-target series are rendered by hand, once per probe result, into bytes kept beside the
  target's state; a scrape only joins them (the measured reason /metrics stays fast at 10k
  targets).  The joined body is cached per format until a result changes it; its gzip form is
  made only when a client asks for gzip.
* stackwatch's own series (build info, reloads, scheduler, ``process_*``, ``python_*``) come
  from a prometheus_client registry, rendered with its exposition functions.
* Content negotiation: Prometheus text 0.0.4 or OpenMetrics 1.0.0 by the Accept header's
  q-values, with the ``escaping=`` parameter Prometheus 3 sends honoured (every name stackwatch
  writes is a legacy name, so each escaping scheme gives the same bytes).
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import math
import platform
import time
import zlib
from array import array
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.openmetrics import exposition as om_exposition

from stackwatch import __version__
from stackwatch.config import TargetConfig
from stackwatch.buckets import Buckets
from stackwatch.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    fmt_le,
    fmt_value,
    header,
    line,
    render_labels,
)
from stackwatch.history import QUANTILES
from stackwatch.probes.base import FAMILIES, Family, ProbeResult
from stackwatch.scheduler import LAG_BUCKETS
from stackwatch.store import LATENCY_BUCKETS, Outcome, Store, TargetState

prometheus_client.disable_created_metrics()

SUCCESS = Family("stackwatch_probe_success", "gauge", "1 if the last probe of the target succeeded, 0 if it failed.")
REASON = Family("stackwatch_probe_failure_reason", "gauge",
                "Why the last probe failed: one series with value 1 for a failing target, none for a passing one.")
LAST_DURATION = Family("stackwatch_probe_last_duration_seconds", "gauge", "Duration of the last probe.")
TIMEOUT = Family("stackwatch_probe_timeout_seconds", "gauge", "Deadline of one probe of the target.")
INTERVAL = Family("stackwatch_probe_interval_seconds", "gauge", "How often the target is probed.")
LAST_RUN = Family("stackwatch_probe_last_run_timestamp_seconds", "gauge", "When the last probe ended, as a Unix timestamp.")
PROBES = Family("stackwatch_probes_total", "counter", "Probes run since start, by result (success or failure).")
FAILURES = Family("stackwatch_probe_failures_total", "counter", "Failed probes since start, by reason.")
LATENCY = Family("stackwatch_probe_duration_seconds", "histogram", "Probe durations (the synthetic request latency).")
RECENT_LATENCY = Family(
    "stackwatch_probe_recent_duration_seconds", "summary",
    "Exact quantiles of the probe durations of the last 5 minutes (at most the last 120 probes; "
    "nearest rank): the same observations as stackwatch_probe_duration_seconds, whose _sum and _count they share.")

CORE_ORDER = (SUCCESS, REASON, LAST_DURATION, TIMEOUT, INTERVAL, LAST_RUN, PROBES, FAILURES, LATENCY, RECENT_LATENCY)

# --------------------------------------------------------------------------- negotiation

ESCAPING_SCHEMES = ("allow-utf-8", "underscores", "dots", "values")


@dataclass(frozen=True, slots=True)
class Format:
    openmetrics: bool
    escaping: str | None = None

    @property
    def content_type(self) -> str:
        base = OPENMETRICS_CONTENT_TYPE if self.openmetrics else TEXT_CONTENT_TYPE
        return f"{base}; escaping={self.escaping}" if self.escaping else base


def negotiate(accept: str) -> Format:
    """The exposition format for an Accept header: the acceptable one with the highest q
    (OpenMetrics on a tie, as client_golang does); text 0.0.4 when nothing else matches."""
    best: tuple[float, int, Format] | None = None
    for position, item in enumerate(accept.split(",")[:32]):
        media, *params = (p.strip() for p in item.split(";"))
        opts: dict[str, str] = {}
        for p in params:
            k, _, v = p.partition("=")
            opts[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(opts.get("q", "1"))
        except ValueError:
            continue
        if q <= 0:
            continue
        media = media.lower()
        escaping = opts.get("escaping")
        escaping = escaping if escaping in ESCAPING_SCHEMES else None
        if media == "application/openmetrics-text" and opts.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
            fmt, pref = Format(True, escaping), 1
        elif media == "text/plain" and opts.get("version", "0.0.4") == "0.0.4":
            fmt, pref = Format(False, escaping), 0
        elif media in ("*/*", "text/*"):
            fmt, pref = Format(False), 0
        else:
            continue
        rank = (q, pref, fmt)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best[2] if best is not None else Format(False)


# --------------------------------------------------------------------------- per-target lines


def base_labels(target: TargetConfig) -> str:
    return render_labels([("target", target.name), ("kind", target.kind), *sorted(target.labels.items())])


def render_result(target: TargetConfig, outcome: Outcome | ProbeResult | None,
                  samples: Iterable[tuple[Family, tuple[tuple[str, str], ...], float]] | None = None,
                  labels: str | None = None) -> dict[str, str]:
    """Gauge-type lines for one result, by family name (also /probe's fresh registry).
    ``samples`` defaults to the result's own when given a ProbeResult."""
    labels = labels if labels is not None else base_labels(target)
    if samples is None:
        samples = outcome.samples if isinstance(outcome, ProbeResult) else ()
    out: dict[str, list[str]] = {
        TIMEOUT.name: [line(TIMEOUT.name, labels, target.deadline)],
        INTERVAL.name: [line(INTERVAL.name, labels, target.every)],
    }
    if outcome is None:
        return {k: "".join(v) for k, v in out.items()}
    out[SUCCESS.name] = [line(SUCCESS.name, labels, 1 if outcome.success else 0)]
    if not outcome.success and outcome.reason is not None:
        out[REASON.name] = [line(REASON.name, f'{labels},reason="{outcome.reason.value}"', 1)]
    out[LAST_DURATION.name] = [line(LAST_DURATION.name, labels, outcome.duration)]
    out[LAST_RUN.name] = [line(LAST_RUN.name, labels, outcome.finished_at)]
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family, extra, value in samples:
        key = (family.name, extra)
        if key in seen:  # a probe emitting the same series twice would make the exposition invalid
            continue
        seen.add(key)
        lab = f"{labels},{render_labels(extra)}" if extra else labels
        out.setdefault(family.name, []).append(line(family.name, lab, value))
    return {k: "".join(v) for k, v in out.items()}


def _histogram_template() -> str:
    """The latency histogram's lines as one %-format, shared by every target: (labels, count)
    per bucket, then (labels, sum) and (labels, count).  One C-level format per result instead
    of 21 line builds, and no per-target copy of the line prefixes."""
    lines = [f'{LATENCY.name}_bucket{{%s,le="{fmt_le(b)}"}} %d\n' for b in (*LATENCY_BUCKETS, math.inf)]
    lines += [f"{LATENCY.name}_sum{{%s}} %s\n", f"{LATENCY.name}_count{{%s}} %d\n"]
    return "".join(lines)


HISTOGRAM = _histogram_template()


def _histogram(state: TargetState) -> str:
    labels = state.labels
    args: list[object] = []
    running = 0
    for n in state.buckets:
        running += n
        args += (labels, running)
    args += (labels, fmt_value(state.duration_sum), labels, running)
    return HISTOGRAM % tuple(args)


RECENT_LINES = "".join(f'{RECENT_LATENCY.name}{{%s,quantile="{q}"}} %s\n' for q in QUANTILES)


def _recent(state: TargetState) -> str | None:
    """The exact quantiles of the last RECENT_WINDOW's durations (what the latency alerts read:
    no bucket interpolation), or None before the first probe."""
    if state.history is None or state.result is None:
        return None
    values = state.history.recent_quantiles(state.result.finished_at)
    if values is None:
        return None
    labels = state.labels
    return RECENT_LINES % tuple(x for v in values for x in (labels, fmt_value(round(v, 6))))  # float32: 6 digits


def probe_body(target: TargetConfig, result: ProbeResult, openmetrics: bool) -> str:
    """The body of /probe: one result in a fresh registry (no counters, no histogram)."""
    chunks = render_result(target, result, result.samples)
    fams = {f.name: f for f, _, _ in result.samples}
    parts = []
    for name, text in chunks.items():
        fam = FAMILIES.get(name) or fams[name]
        parts.append(header(fam.name, fam.type, fam.help, openmetrics) + text)
    return "".join(parts) + ("# EOF\n" if openmetrics else "")


# --------------------------------------------------------------------------- self metrics


class SelfMetrics:
    """stackwatch's own series, in a prometheus_client registry of their own."""

    def __init__(self, exporter: object) -> None:
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
        self.registry.register(_LiveCollector(exporter))

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


class _LiveCollector:
    """Values read at scrape time from the running exporter (targets, scheduler)."""

    def __init__(self, exporter: object) -> None:
        self.ex = exporter

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterable[object]:
        ex = self.ex
        targets = GaugeMetricFamily("stackwatch_targets", "Configured targets by probe kind.", labels=["kind"])
        counts: dict[str, int] = {k: 0 for k in ex.probers.kinds}  # type: ignore[attr-defined]
        for t in ex.config.targets:  # type: ignore[attr-defined]
            counts[t.kind] = counts.get(t.kind, 0) + 1
        for kind, n in sorted(counts.items()):
            targets.add_metric([kind], n)
        yield targets
        index, count = getattr(ex, "shard", (0, 1))
        shard = GaugeMetricFamily("stackwatch_shard_info",
                                  "This replica's shard: it probes the targets whose name hashes to index, of count.",
                                  labels=["index", "count"])
        shard.add_metric([str(index), str(count)], 1)
        yield shard
        loop = GaugeMetricFamily("stackwatch_event_loop_info", "The event loop this process runs on (--event-loop).",
                                 labels=["loop"])
        loop.add_metric([running_loop_name()], 1)
        yield loop
        sched = ex.scheduler  # type: ignore[attr-defined]
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
        for kind, state in sorted(ex.probers.states.items()):  # type: ignore[attr-defined]
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
        web = getattr(ex, "listener_stats", None)
        if web is not None:
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
        auth = getattr(ex, "auth", None)
        if auth is not None:
            yield CounterMetricFamily("stackwatch_http_auth_failures",
                                      "Requests refused for missing or wrong basic auth credentials.",
                                      value=auth.failures)
            yield CounterMetricFamily("stackwatch_http_auth_busy",
                                      "Requests answered 429 because too many logins were being checked.",
                                      value=auth.busy)
        pauses = getattr(ex, "gc_pauses", None)
        if pauses is not None:
            yield pauses.family()
            yield GaugeMetricFamily("stackwatch_gc_frozen_objects",
                                    "Objects moved to the garbage collector's permanent generation (long-lived, "
                                    "never scanned; a full sweep runs when they grow), counted as they are frozen.",
                                    value=getattr(ex, "gc_baseline", 0) + getattr(ex, "gc_grown", 0))
            yield CounterMetricFamily("stackwatch_gc_sweeps",
                                      "Full garbage-collector sweeps over the frozen objects too.",
                                      value=getattr(ex, "gc_sweeps", 0))
        yield HistogramMetricFamily(
            "stackwatch_scheduler_lag_seconds",
            "Delay between a probe's planned start and the moment it got a concurrency slot.",
            buckets=lag.cumulative(), sum_value=lag.sum)


# --------------------------------------------------------------------------- the /metrics body


@dataclass(frozen=True, slots=True)
class Layout:
    """The families of a target's rendered lines, in order.  Shared by every target rendering
    the same families (one object for thousands of targets)."""

    names: tuple[str, ...]
    index: dict[str, int]


class Collector:
    """Renders targets' lines when their state changes and serves cached /metrics bodies.

    Memory, per target: its lines as one bytes object plus an array of offsets (one per family)
    and a shared :class:`Layout`.  Bodies: one cache per (format, gzip) that was asked for, each
    dropped when nobody asked for it in :data:`UNUSED_AFTER` seconds; a gzip body is compressed as
    it is built, so no uncompressed copy of it is ever held.
    """

    def __init__(self) -> None:
        self.store = Store(base_labels, self.render_state)
        self._dynamic: dict[str, Family] = {}  # config-declared families, learnt from samples
        self._families: set[str] = set()
        self._layouts: dict[tuple[str, ...], Layout] = {}
        self._cache: dict[tuple[bool, bool], _Body] = {}
        self._rebuilding: dict[tuple[bool, bool], asyncio.Task[_Body]] = {}
        self._locks: dict[tuple[bool, bool], asyncio.Lock] = {}
        self._zipper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stackwatch-gzip")
        self._members: dict[tuple[str, int], tuple[int, bytes]] = {}
        """(family, phase group) -> (group version, gzip member of those lines; b"" if none)."""
        self._members_generation = -1
        self._headers: dict[tuple[str, str, str, bool], bytes] = {}
        self._last_scrape: dict[tuple[bool, bool], float] = {}
        self._build_seconds: dict[tuple[bool, bool], float] = {}
        self._prebuild: dict[tuple[bool, bool], asyncio.TimerHandle] = {}

    def render_state(self, state: TargetState, result: ProbeResult | None) -> None:
        samples = result.samples if result is not None else ()
        chunks: dict[str, str] = render_result(state.target, state.result, samples, state.labels)
        chunks[PROBES.name] = (line(PROBES.name, f'{state.labels},result="success"', state.successes)
                               + line(PROBES.name, f'{state.labels},result="failure"', state.failures))
        if state.by_reason:
            chunks[FAILURES.name] = "".join(
                line(FAILURES.name, f'{state.labels},reason="{r}"', n) for r, n in sorted(state.by_reason.items()))
        chunks[LATENCY.name] = _histogram(state)
        recent = _recent(state)
        if recent is not None:
            chunks[RECENT_LATENCY.name] = recent
        names = tuple(chunks)
        layout = self._layouts.get(names)
        if layout is None:
            layout = self._layouts[names] = Layout(names, {n: i for i, n in enumerate(names)})
            if len(self._layouts) > 4096:  # config-declared families vary per target; bound the table
                self._layouts.clear()
        texts = list(chunks.values())
        text = "".join(texts)
        offs = array("I", [0])
        pos = 0
        if text.isascii():  # one encode, offsets from the string lengths
            blob = text.encode()
            for t in texts:
                pos += len(t)
                offs.append(pos)
        else:
            encoded = [t.encode() for t in texts]
            blob = b"".join(encoded)
            for e in encoded:
                pos += len(e)
                offs.append(pos)
        state.blob, state.offs, state.layout = blob, offs, layout
        if not self._families.issuperset(names):
            self._families.update(names)
            for fam, _, _ in samples:
                if fam.name not in FAMILIES:
                    self._dynamic[fam.name] = fam

    def close(self) -> None:
        for timer in self._prebuild.values():
            timer.cancel()
        self._zipper.shutdown(wait=False)

    def families_in_use(self) -> list[str]:
        core = [f.name for f in CORE_ORDER]
        return [n for n in core if n in self._families] + sorted(self._families - set(core))

    async def _build(self, openmetrics: bool, compress: bool) -> _Body:
        """Every target's series, grouped by family; gzipped when ``compress``.

        Gzipped, the body is a run of gzip members, one per (family, phase group of ~200
        targets), kept between builds: a build re-renders and recompresses only the groups that
        got a result since the member was made.  Targets of a group are probed at about the same
        moment of their interval, so with a scrape every 2 s and probes every 15 s a build redoes
        ~15 % of the body.  Compression runs in the collector's own thread.  The plain body is
        joined whole (it is asked for rarely: curl, tests), family by family, yielding between
        slices, so a build never stalls running probes for more than a few ms.
        """
        for _ in range(3):
            generation = self.store.generation
            body = await self._build_once(openmetrics, compress)
            if self.store.generation == generation:
                body.generation = generation
                return body
            # a reload replaced the targets while this body was built: it could hold both sets
        body = await self._build_once(openmetrics, compress)
        body.generation = self.store.generation
        return body

    async def _build_once(self, openmetrics: bool, compress: bool) -> _Body:
        store = self.store
        version = store.version
        names = self.families_in_use()
        if not compress:
            parts: list[bytes] = []
            for name in names:
                fam = FAMILIES.get(name) or self._dynamic[name]
                parts.append(header(fam.name, fam.type, fam.help, openmetrics).encode())
                for group in store.groups:
                    parts.append(_join_family(group, name))
                    if len(store.states) > 1000:
                        await asyncio.sleep(0)
            return _Body(version, time.monotonic(), b"".join(parts))

        if self._members_generation != store.generation:
            self._members = {}
            self._members_generation = store.generation
        members = self._members
        versions = list(store.group_versions)
        loop = asyncio.get_running_loop()
        batch: list[tuple[tuple[str, int], int, bytes]] = []
        size = 0

        async def compress_batch() -> None:
            nonlocal batch, size
            datas = [b[2] for b in batch]
            # zlib releases the GIL: the event loop (and the probes' timestamps) never wait for it
            packed = await loop.run_in_executor(self._zipper, _gzip_each, datas)
            for (key, ver, _), data in zip(batch, packed):
                members[key] = (ver, data)
            batch, size = [], 0

        # Re-rendered pieces go to the gzip thread in batches as they are made: at most
        # COMPRESS_CHUNK uncompressed bytes are held at a time, never the whole body.
        for name in names:
            for g, group in enumerate(store.groups):
                held = members.get((name, g))
                if held is None or held[0] != versions[g]:
                    data = _join_family(group, name)
                    batch.append(((name, g), versions[g], data))
                    size += len(data)
                    if size >= COMPRESS_CHUNK:
                        await compress_batch()
            if len(store.states) > 1000:
                await asyncio.sleep(0)
        if batch:
            await compress_batch()
        parts = []
        for name in names:
            fam = FAMILIES.get(name) or self._dynamic[name]
            parts.append(self._header_member(fam, openmetrics))
            for g in range(len(store.groups)):
                data = members[(name, g)][1]
                if data:
                    parts.append(data)
        return _Body(version, time.monotonic(), b"".join(parts))

    def _header_member(self, fam: Family, openmetrics: bool) -> bytes:
        key = (fam.name, fam.type, fam.help, openmetrics)
        data = self._headers.get(key)
        if data is None:
            data = self._headers[key] = _gzip(header(fam.name, fam.type, fam.help, openmetrics).encode())
        return data

    async def targets_body(self, openmetrics: bool, compress: bool = False) -> _Body:
        """The target part of /metrics, rebuilt only when a result arrived since the last build.

        With many targets (over LARGE) a scrape does not wait for a rebuild: it gets the last
        complete body (at most STALE_AFTER seconds old) while a rebuild runs in the background.
        Prometheus scrapes every 15 s or so and probe results are up to one interval old anyway.
        """
        key = (openmetrics, compress)
        now = time.monotonic()
        if len(self.store.states) > LARGE:
            self._plan_prebuild(key, now)
        for other, body in list(self._cache.items()):
            if other != key and now - body.used_at > UNUSED_AFTER:
                del self._cache[other]  # a format nobody asks for any more
        cached = self._cache.get(key)
        if cached is not None and cached.generation == self.store.generation:
            cached.used_at = now
            if cached.version == self.store.version:
                return cached
            if len(self.store.states) > LARGE and now - cached.built_at < STALE_AFTER:
                task = self._rebuilding.get(key)
                if task is None or task.done():
                    self._rebuilding[key] = asyncio.create_task(self._rebuild(key))
                return cached
        return await self._rebuild(key)

    def _plan_prebuild(self, key: tuple[bool, bool], now: float) -> None:
        """Prometheus scrapes at a fixed interval: build the next body shortly before the next
        scrape is due, so that scrape is served at once from a body well under a second old."""
        last = self._last_scrape.get(key)
        self._last_scrape[key] = now
        if last is None:
            return
        interval = now - last
        if not 0.5 <= interval <= 300:
            return
        lead = min(interval / 2, 2 * self._build_seconds.get(key, 0.1) + 0.2)
        timer = self._prebuild.get(key)
        if timer is not None:
            timer.cancel()

        def start() -> None:
            task = self._rebuilding.get(key)
            if task is None or task.done():
                self._rebuilding[key] = asyncio.create_task(self._rebuild(key))

        self._prebuild[key] = asyncio.get_running_loop().call_later(interval - lead, start)

    async def _rebuild(self, key: tuple[bool, bool]) -> _Body:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:  # concurrent scrapes share one build
            cached = self._cache.get(key)
            if cached is not None and cached.version == self.store.version \
                    and cached.generation == self.store.generation:
                return cached
            started = time.monotonic()
            body = await self._build(*key)
            self._build_seconds[key] = time.monotonic() - started
            if cached is not None:
                body.used_at = cached.used_at
            self._cache[key] = body
            return body

    async def render(self, fmt: Format, extra: Callable[[bool], bytes], compress: bool) -> list[bytes]:
        """The /metrics body as a list of parts: target series, then ``extra`` self metrics
        (always fresh).  Gzipped parts are separate gzip members, which every gzip reader
        (Go's included) concatenates, so the big part is compressed once per build, not per scrape.
        """
        body = await self.targets_body(fmt.openmetrics, compress)
        tail = extra(fmt.openmetrics) + (b"# EOF\n" if fmt.openmetrics else b"")
        if not compress:
            return [body.data, tail]
        return [body.data, _gzip(tail)]


@dataclass(slots=True)
class _Body:
    version: int
    built_at: float
    data: bytes
    """The body, gzipped for a gzip cache entry."""
    generation: int = -1
    """The store's target set (Store.generation) the body was built from: a body of another
    set (before a reload) is never served, however recent."""
    used_at: float = field(default_factory=time.monotonic)


LARGE = 2000
STALE_AFTER = 5.0
COMPRESS_CHUNK = 256 * 1024
"""Uncompressed bytes handed to the gzip thread at a time."""
UNUSED_AFTER = 60.0
"""A cached body of a format nobody asked for in this long is dropped."""


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def _gzip_each(datas: list[bytes]) -> list[bytes]:
    # Level 1: 4-5x faster than level 9 for ~12 % more bytes.  Empty input stays empty (no member).
    return [zlib.compress(d, 1, 16 + zlib.MAX_WBITS) if d else b"" for d in datas]


def _join_family(states: list[TargetState], name: str) -> bytes:
    """One family's lines of the given targets, in their order."""
    return b"".join([s.blob[s.offs[j]:s.offs[j + 1]] for s in states
                     if s.layout is not None and (j := s.layout.index.get(name)) is not None])
