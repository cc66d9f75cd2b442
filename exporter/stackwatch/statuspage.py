"""The status page (``/``, ``/targets/NAME``) and its JSON API (``/api/v1/targets``,
``/api/v1/targets/NAME/history``), documented in ``docs/openapi.yaml``.

Server-rendered HTML with inline SVG: no JavaScript, no external assets, refreshing itself every
30 s.  Each target shows its state (up, degraded with the failing checks, down with the reason,
stale, pending), a 24-hour bar of quarter-hours and a 90-day bar of days with uptime percentages.

History comes from Prometheus when ``--prometheus.url`` is set (``stackwatch_probe_success``
over time: survives restarts, spans Prometheus's retention), else from memory since start (and
the page says so).  Current alerts come from Alertmanager (``--alertmanager.url``), recent
incidents from Prometheus's ``ALERTS`` series.  A remote that fails or is slow falls back to
memory; the page never waits more than a few seconds.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from collections.abc import Awaitable, Callable

from stackwatch import __version__
from stackwatch.cooperative import Slicer
from stackwatch.durations import human_duration
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


def incidents_html(found: list[Incident], source: str, now: float, show_target: bool = True) -> str:
    when = lambda ts: time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))  # noqa: E731
    rows = []
    for i in found:
        end = f"ongoing since {when(i.start)}" if i.end is None else when(i.end)
        name = f"<td><a href='targets/{html.escape(i.target)}'>{html.escape(i.target)}</a></td>" if show_target else ""
        rows.append(f"<tr class='{'down' if i.end is None else 'past'}'>{name}<td>{when(i.start)}</td><td>{end}</td>"
                    f"<td>{human_duration(i.duration(now))}</td><td class='reason'>{html.escape(i.reason)}</td></tr>")
    origin = "from Prometheus, one point a minute" if source == "prometheus" else "since stackwatch started"
    head = ("<th>Target</th>" if show_target else "") + "<th>Start (UTC)</th><th>End</th><th>Duration</th><th>Reason</th>"
    if not rows:
        return f"<h2>Incidents, last 24 hours</h2><p class='note'>None ({origin}).</p>"
    return (f"<h2>Incidents, last 24 hours</h2><p class='note'>Failing probes, {origin}.</p>"
            f"<table class='incidents'><tr>{head}</tr>{''.join(rows)}</table>")


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

COLORS = {"up": "#2e7d32", "degraded": "#ef8f00", "down": "#c62828", "stale": "#6d4c41", "pending": "#757575"}

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.4em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;
vertical-align:top;font-size:.9em}.state{font-weight:bold;text-transform:uppercase}
.up .state{color:#2e7d32}.degraded .state{color:#ef8f00}.down .state,.stale .state{color:#c62828}
.pending .state{color:#757575}.note{color:#555;font-size:.85em}.summary span{margin-right:1.2em}
svg{display:block;max-width:100%;height:auto}.reason{max-width:32em;word-break:break-word}
@media (max-width:640px){body{margin:.6em}table,tbody,tr,td{display:block;width:100%}tr:first-child{display:none}
table.job tr:first-child{display:block}tr{border-bottom:1px solid #ddd;padding:.5em 0}td{border:0;padding:2px 0}td svg{width:100%;height:12px}
.reason{max-width:none}}"""


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.2f}%"


def bar_svg(buckets: list[Bucket], width: int = 288, height: int = 14, title: str = "") -> str:
    n = len(buckets)
    w = width / n
    rects = []
    for i, b in enumerate(buckets):
        color = _bar_color(b.ratio)
        tip = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b.start)) + " UTC: " + pct(b.ratio)
        rects.append(f'<rect x="{i * w:.2f}" width="{max(w - 0.6, 0.6):.2f}" height="{height}" fill="{color}">'
                     f"<title>{tip}</title></rect>")
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
            f'role="img" aria-label="{html.escape(title)}">' + "".join(rects) + "</svg>")


def _bar_color(ratio: float | None) -> str:
    if ratio is None:
        return "#e0e0e0"
    if ratio >= 0.999:
        return "#43a047"
    if ratio >= 0.95:
        return "#fdd835"
    return "#e53935"


def bar_svg_compact(buckets: list[Bucket], width: int = 288, height: int = 14, title: str = "") -> str:
    """The same bar in a few hundred bytes: one path per colour over a viewBox one unit per
    bucket, runs of a colour merged, one tooltip for the whole bar (the target's page has one per
    bucket).  For the list, where it is drawn once per target."""
    runs: dict[str, list[str]] = {}
    i = 0
    while i < len(buckets):
        color = _bar_color(buckets[i].ratio)
        j = i
        while j + 1 < len(buckets) and _bar_color(buckets[j + 1].ratio) == color:
            j += 1
        runs.setdefault(color, []).append(f"M{i} 0h{j - i + 1}v1h-{j - i + 1}z")
        i = j + 1
    paths = "".join(f'<path fill="{c}" d="{"".join(d)}"/>' for c, d in runs.items())
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {len(buckets)} 1" preserveAspectRatio="none" '
            f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>{paths}</svg>')


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


GOAL_P95 = 2.0
"""The latency line drawn on a target's chart: the p95 threshold of StackwatchHighResponseTime."""


def latency_svg(points: list[tuple[float, float]], width: int = 720, height: int = 180, label: str = "probe latency",
                goal: float = GOAL_P95) -> str:
    """A line of (time, seconds) with labelled axes (milliseconds up, UTC time along) and the
    goal as a dashed line when it is within twice the highest point (named below otherwise)."""
    if len(points) < 2:
        return '<p class="note">Not enough probes yet for a latency chart.</p>'
    left, bottom, right = 52, 22, 8
    plot_w, plot_h = width - left - right, height - bottom - 10
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0
    high = max(v for _, v in points) or 0.001
    top = _nice_ceiling(max(high, goal) if goal <= 2 * high else high)

    def x(t: float) -> float:
        return left + (t - t0) / span * plot_w

    def y(v: float) -> float:
        return 10 + plot_h - v / top * plot_h

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{html.escape(label)}"><title>{html.escape(label)}</title>']
    for frac in (0, 0.5, 1):  # y axis: 0, half, top
        v = top * frac
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" stroke="#e0e0e0"/>'
                     f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{_ms(v)}</text>')
    ticks = 4
    fmt = "%H:%M:%S" if span < 600 else "%H:%M" if span <= 2 * 86400 else "%m-%d"
    for k in range(ticks + 1):  # x axis: times in UTC
        t = t0 + span * k / ticks
        anchor = "start" if k == 0 else "end" if k == ticks else "middle"
        parts.append(f'<text x="{x(t):.1f}" y="{height - 6}" font-size="11" text-anchor="{anchor}">'
                     f'{time.strftime(fmt, time.gmtime(t))}</text>')
    if goal <= top:
        parts.append(f'<line x1="{left}" y1="{y(goal):.1f}" x2="{width - right}" y2="{y(goal):.1f}" stroke="#c62828" '
                     f'stroke-dasharray="5,4"><title>goal: p95 under {_ms(goal)}</title></line>'
                     f'<text x="{width - right}" y="{y(goal) - 3:.1f}" font-size="11" fill="#c62828" '
                     f'text-anchor="end">goal {_ms(goal)}</text>')
    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{coords}"/></svg>')
    if goal > top:
        parts.append(f'<p class="note">Goal: p95 under {_ms(goal)} (above the chart; times in UTC).</p>')
    else:
        parts.append('<p class="note">Times in UTC; the dashed line is the p95 goal.</p>')
    return "".join(parts)


def _ms(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 0.01:
        return f"{seconds * 1000:.2g} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:g} s"


def _nice_ceiling(v: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above v."""
    power = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= v * 0.999:
            return m * power
    return 10 * power


def page(title: str, body: str, refresh: int = 30) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta http-equiv="refresh" content="{refresh}">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}"
            f'<p class="note">stackwatch {__version__} · <a href="/metrics">metrics</a> · '
            f'<a href="/api/v1/targets">JSON</a></p></body></html>')


def alerts_html(alerts: list[Alert] | str | None, target: str | None = None) -> str:
    """The alerts section: None without an Alertmanager, a string when it could not be read."""
    if alerts is None:
        return ""
    if isinstance(alerts, str):
        return f"<h2>Alerts</h2><p class='note'>Alerts unavailable: {html.escape(alerts)}</p>"
    rows = []
    for a in alerts:
        labels = a.labels
        if target is not None and labels.get("target") != target:
            continue
        if labels.get("alertname") == "StackwatchWatchdog":
            continue
        rows.append(f"<li><b>{html.escape(labels.get('alertname', ''))}</b> "
                    f"({html.escape(labels.get('severity', ''))}, {html.escape(a.status.state)}) "
                    f"{html.escape(labels.get('target', ''))}: "
                    f"{html.escape(a.annotations.get('description', ''))}</li>")
    if not rows:
        return "<h2>Alerts</h2><p>No active alerts.</p>"
    return f"<h2>Alerts</h2><ul>{''.join(rows[:50])}</ul>"
