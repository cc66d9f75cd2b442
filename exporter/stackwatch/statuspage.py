"""What the status page (``/``, ``/targets/NAME``, drawn by stackwatch.pages) and its JSON API
(``/api/v1/targets``, ``/api/v1/targets/NAME/history``, documented in ``docs/openapi.yaml``) show.

Each target shows its state (up, degraded with the failing checks, down with the reason,
stale, pending), a 24-hour bar of quarter-hours and a 90-day bar of days with uptime percentages.

History comes from Prometheus when ``--prometheus.url`` is set (``stackwatch_probe_success``
over time: survives restarts, spans Prometheus's retention), else from memory since start (and
the page says so).  Current alerts come from Alertmanager (``--alertmanager.url``), recent
incidents from Prometheus's ``ALERTS`` series.  A remote that fails or is slow falls back to
memory; the page never waits more than a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from collections.abc import Awaitable, Callable

from stackwatch.cooperative import Slicer
from stackwatch.incidents import Incident, from_reason_series
from stackwatch.history import DAY, QUANTILES, QUARTER, RECENT_FAILURES, RECENT_MIN_PROBES, RECENT_WINDOW, Bucket, uptime
from stackwatch.probes.base import check_words
from stackwatch.remote import Alert, Alertmanager, Limits, Prometheus, RemoteError, Series
from stackwatch.store import Store, TargetState

log = logging.getLogger("stackwatch.status")

PAGE_SIZE = 100
REMOTE_TIMEOUT = 4.0
CACHE_SECONDS = 30.0
ERROR_CACHE_SECONDS = 10.0


@dataclass
class TargetHistory:
    quarter: list[Bucket]
    day: list[Bucket]
    source: str  # "prometheus" | "memory"

    @property
    def uptime_24h(self) -> float | None:
        return uptime(self.quarter)

    @property
    def uptime_90d(self) -> float | None:
        return uptime(self.day)


CALL_LIMITS = Limits(total=REMOTE_TIMEOUT, max_bytes=16 * 1024 * 1024)
WAIT = 1.5
"""Seconds a page waits for a remote answer it does not have yet; past it the page shows memory
history (or no alerts) and says so, while the fetch goes on in the background and fills the
cache for the next view."""


@dataclass
class _Entry:
    at: float
    value: Any


@dataclass
class Remotes:
    """Optional Prometheus and Alertmanager to read history and alerts from (remote.py clients).

    Answers are cached for CACHE_SECONDS; one fetch per question runs at a time whatever the
    number of viewers; a view waits at most WAIT seconds, and a cached answer past its age is
    shown at once while a fresh one is fetched."""

    prometheus: str | None = None
    alertmanager: str | None = None
    _prom: Prometheus | None = None
    _am: Alertmanager | None = None
    _cache: dict[str, _Entry] = field(default_factory=dict)
    _inflight: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    _failed: dict[str, tuple[float, RemoteError]] = field(default_factory=dict)
    last_error: str = ""
    """Why the last history read from Prometheus failed ("" when it worked)."""
    last_answer_at: float = 0.0
    """Wall-clock time of the newest answer shown (the page gives its age)."""

    def prom(self) -> Prometheus:
        assert self.prometheus
        if self._prom is None or self._prom.url != self.prometheus.rstrip("/"):
            self._prom = Prometheus(self.prometheus, CALL_LIMITS)
        return self._prom

    def am(self) -> Alertmanager:
        assert self.alertmanager
        if self._am is None or self._am.url != self.alertmanager.rstrip("/"):
            self._am = Alertmanager(self.alertmanager, CALL_LIMITS)
        return self._am

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        for client in (self._prom, self._am):
            if client is not None:
                await client.close()

    async def _cached(self, key: str, fetch: Callable[[], Awaitable[Any]], wait: float = WAIT) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit.at < CACHE_SECONDS:
            return hit.value
        failed = self._failed.get(key)
        if failed is not None and now - failed[0] < ERROR_CACHE_SECONDS:
            raise failed[1]  # a server that just failed is not asked again by every view
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.get_running_loop().create_task(fetch())
            task.add_done_callback(lambda t: self._store(key, t))
        if hit is not None:
            return hit.value  # past its age: shown now, the fresh answer is on its way
        try:
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except TimeoutError:
            if failed is not None:
                raise RemoteError(failed[1].reason, f"{failed[1].message} (asking again)") from None
            raise RemoteError("timeout", f"no answer yet after {wait:g}s (still asking in the background)") from None

    def _store(self, key: str, task: asyncio.Task[Any]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            error = exc if isinstance(exc, RemoteError) else RemoteError("internal", f"{type(exc).__name__}: {exc}")
            self._failed[key] = (time.monotonic(), error)
            log.debug("remote call failed: %s", error.message)
            return
        self._failed.pop(key, None)
        self.last_answer_at = time.time()
        if len(self._cache) >= 256:
            self._cache.clear()
        self._cache[key] = _Entry(time.monotonic(), task.result())

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        # the key leaves out start and end: the same question a few seconds later is the same question
        key = f"range|{expr}|{step:.0f}"
        return await self._cached(key, lambda: self.prom().query_range(expr, start, end, step))

    async def sync_silences(self, windows: list[Any]) -> int:
        """Make Alertmanager's silences match the config's maintenance windows: one silence per
        window not yet over (created by "stackwatch"), expired when the window is removed or
        changed.  Returns the number created."""
        am = self.am()
        ours = [x for x in await am.silences() if x.createdBy == "stackwatch" and x.status.state in ("active", "pending")]
        now = time.time()
        wanted = {}
        for w in windows:
            if w.end <= now:
                continue
            matchers = [{"name": "target", "value": "|".join(re.escape(t) for t in w.targets),
                         "isRegex": True, "isEqual": True}]
            wanted[f"stackwatch maintenance {w.name}: {w.comment}".strip()] = {
                "matchers": matchers, "startsAt": _iso(max(w.start, now)), "endsAt": _iso(w.end),
                "createdBy": "stackwatch", "comment": f"stackwatch maintenance {w.name}: {w.comment}".strip()}
        keep = set()
        for x in ours:
            want = wanted.get(x.comment)
            same = want is not None and _iso_equal(x.endsAt, want["endsAt"]) and [
                (m.name, m.value, m.isRegex) for m in x.matchers] == [
                (m["name"], m["value"], m["isRegex"]) for m in want["matchers"]]
            if same:
                keep.add(x.comment)
            else:
                await am.expire_silence(x.id)
        created = 0
        for comment, body in wanted.items():
            if comment not in keep:
                await am.create_silence(body)
                created += 1
        return created

    async def alerts(self) -> list[Alert]:
        return await self._cached("alerts", lambda: self.am().alerts())


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _iso_equal(a: str | None, b: str) -> bool:
    from datetime import datetime

    try:
        return abs(datetime.fromisoformat((a or "").replace("Z", "+00:00")).timestamp()
                   - datetime.fromisoformat(b.replace("Z", "+00:00")).timestamp()) < 1
    except ValueError:
        return False


def _matcher(names: list[str]) -> str:
    return "|".join(re.escape(n).replace("\\", "\\\\") for n in names)


def _buckets_from(values: list[tuple[float, str]], width: float, slots: int, now: float) -> list[Bucket]:
    by_start = {}
    for ts, value in values:
        v = float(value)
        if not math.isnan(v):
            by_start[int(float(ts) // width)] = v
    last = int(now // width)
    out = []
    for b in range(last - slots + 1, last + 1):
        ratio = by_start.get(b)
        out.append(Bucket(b * width, (b + 1) * width, ratio, 1 if ratio is not None else 0))
    return out


async def histories(store: Store, remotes: Remotes, names: list[str]) -> dict[str, TargetHistory]:
    """History of the named targets: Prometheus when configured and answering, else memory."""
    now = time.time()
    out: dict[str, TargetHistory] = {}
    if remotes.prometheus and names:
        try:
            sel = f'stackwatch_probe_success{{target=~"{_matcher(names)}"}}'
            q, d = await asyncio.gather(
                remotes.query_range(f"avg by (target) (avg_over_time({sel}[15m]))", now - 96 * QUARTER, now, QUARTER),
                remotes.query_range(f"avg by (target) (avg_over_time({sel}[1d]))", now - 90 * DAY, now, DAY))
            quarters = {r.metric.get("target"): r.values for r in q}
            days = {r.metric.get("target"): r.values for r in d}
            slicer = Slicer()
            for n in names:
                out[n] = TargetHistory(_buckets_from(quarters.get(n, []), QUARTER, 96, now),
                                       _buckets_from(days.get(n, []), DAY, 90, now), "prometheus")
                await slicer.pause()
            remotes.last_error = ""
            return out
        except RemoteError as exc:
            remotes.last_error = exc.message
            log.debug("history from Prometheus failed, using memory: %s", exc.message)
    slicer = Slicer()
    for n in names:
        state = store.states.get(n)
        h = state.history if state is not None else None
        if h is None:
            out[n] = TargetHistory(_buckets_from([], QUARTER, 96, now), _buckets_from([], DAY, 90, now), "memory")
        else:
            out[n] = TargetHistory(h.quarter.series(now), h.day.series(now), "memory")
        await slicer.pause()
    return out


INCIDENT_WINDOW = 86400.0
INCIDENT_STEP = 60.0
"""Incidents from Prometheus: the last day at one point a minute (an outage shorter than a
minute between two points may not show; memory mode sees every probe)."""


async def incidents(store: Store, remotes: Remotes, target: str | None = None,
                    limit: int = 20) -> tuple[list[Incident], str]:
    """The last day's incidents, newest first, and where they come from ("prometheus" or "memory")."""
    now = time.time()
    if remotes.prometheus:
        sel = f'{{target=~"{_matcher([target])}"}}' if target is not None else ""
        try:
            series = await remotes.query_range(f"stackwatch_probe_failure_reason{sel} == 1",
                                               now - INCIDENT_WINDOW, now, INCIDENT_STEP)
            found = from_reason_series([(s.metric, s.values) for s in series], INCIDENT_STEP, now)
            return found[:limit], "prometheus"
        except RemoteError as exc:
            remotes.last_error = exc.message
    return store.incidents.recent(now - INCIDENT_WINDOW, target, limit), "memory"


@dataclass(frozen=True, slots=True)
class Uptimes:
    """What the JSON API shows of a target's history."""

    u24h: float | None
    u90d: float | None
    source: str


async def uptimes(store: Store, remotes: Remotes, names: list[str]) -> dict[str, Uptimes]:
    """24-hour and 90-day uptime of the named targets; from memory without building the bars,
    yielding to the event loop as it goes (the API lists every target)."""
    if remotes.prometheus and names:
        hist = await histories(store, remotes, names)
        if hist and next(iter(hist.values())).source == "prometheus":
            return {n: Uptimes(h.uptime_24h, h.uptime_90d, h.source) for n, h in hist.items()}
    now = time.time()
    out: dict[str, Uptimes] = {}
    slicer = Slicer()
    for n in names:
        state = store.states.get(n)
        h = state.history if state is not None else None
        out[n] = Uptimes(h.quarter.uptime(now), h.day.uptime(now), "memory") if h is not None \
            else Uptimes(None, None, "memory")
        await slicer.pause()
    return out


def target_state(state: TargetState, now: float) -> tuple[str, str, list[str]]:
    """(state, reason, failing checks) as the page and the API show them.

    up: the last probe passed, no check fails, and at most 5 % of the last 5 minutes' probes
    failed; degraded: the last probe passed but checks fail, or more of the recent probes
    failed (a flapping service); down: the last probe failed; stale: no probe for three
    intervals; pending: none yet."""
    r, t = state.result, state.target
    if r is None:
        return "pending", "", []
    status = r.state(now, t.every)
    if status == "up" and state.history is not None:
        failed, probes = state.history.recent(now, RECENT_WINDOW)
        if probes >= RECENT_MIN_PROBES and failed / probes > RECENT_FAILURES:
            return "degraded", (f"{failed} of the last {probes} probes failed in {RECENT_WINDOW / 60:.0f} min "
                                f"({failed / probes * 100:.0f} %, over {RECENT_FAILURES * 100:.0f} %)"), []
    if status == "down":
        reason = f"{r.reason.value}: {r.message}" if r.reason else r.message
    elif status == "stale":
        reason = f"no probe for {now - r.finished_at:.0f}s (interval {t.every:g}s)"
    elif status == "degraded":
        reason = "failing checks: " + "; ".join(check_words(c) for c in r.failing_checks)
    else:
        reason = ""
    return status, reason, list(r.failing_checks)


def target_json(state: TargetState, hist: Uptimes, now: float, maintenance: str | None = None) -> dict[str, Any]:
    status, reason, checks = target_state(state, now)
    r = state.result
    return {"maintenance": maintenance,
        "name": state.target.name, "kind": state.target.kind, "labels": dict(state.target.labels),
        "state": status, "reason": reason, "failing_checks": checks,
        "last_probe": r.finished_at if r else None, "duration_seconds": r.duration if r else None,
        "since": state.since if r else None,
        "interval_seconds": state.target.every,
        "uptime": {"24h": hist.u24h, "90d": hist.u90d}, "history_source": hist.source,
    }


def probes_json(state: TargetState) -> dict[str, Any]:
    """The last probes of a target (at most History.LATENCY_POINTS, from memory) and the exact
    latency quantiles of the last RECENT_WINDOW, as the latency alerts read them."""
    h, r = state.history, state.result
    points = h.probes() if h is not None else []
    values = h.recent_quantiles(r.finished_at) if h is not None and r is not None else None
    return {"target": state.target.name, "window_seconds": RECENT_WINDOW,
            "quantiles": {str(q): round(v, 6) for q, v in zip(QUANTILES, values)} if values else {},
            "probes": [{"time": round(at, 3), "duration_seconds": round(d, 6), "success": ok} for at, d, ok in points]}


def history_json(name: str, hist: TargetHistory, range_: str) -> dict[str, Any]:
    buckets = hist.quarter if range_ == "24h" else hist.day
    return {"target": name, "range": range_, "source": hist.source, "uptime": uptime(buckets),
            "buckets": [{"start": b.start, "end": b.end, "uptime": b.ratio, "probes": b.probes} for b in buckets]}


# --------------------------------------------------------------------------- HTML

LATENCY_RANGES = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


async def latency_history(remotes: Remotes, target: str, range_: str) -> list[tuple[float, float]]:
    """The target's p95 over 1h, 24h or 7d from Prometheus (stackwatch_probe_recent_duration_seconds,
    240 points).  RemoteError without a Prometheus or when it fails."""
    if not remotes.prometheus:
        raise RemoteError("config", "no --prometheus.url")
    seconds = LATENCY_RANGES[range_]
    now = time.time()
    expr = f'max(stackwatch_probe_recent_duration_seconds{{target=~"{_matcher([target])}",quantile="0.95"}})'
    series = await remotes.query_range(expr, now - seconds, now, seconds / 240)
    points = [(float(t), float(v)) for s in series for t, v in s.values]
    return [(t, v) for t, v in points if not math.isnan(v)]
