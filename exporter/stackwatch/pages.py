"""Every HTML the exporter serves: the status page (``/``), a target's page (``/targets/NAME``)
and their parts (uptime bars, latency chart, alerts, incidents), in one place.

Server-rendered HTML with inline SVG: no JavaScript, no external assets, refreshing itself every
30 s.  Every string that comes from a config, a target or a remote goes through ``html.escape``
here; the functions take plain data (no exporter, no request), so the server gathers and this
module only draws.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from stackwatch import __version__
from stackwatch.durations import human_duration
from stackwatch.history import Bucket
from stackwatch.incidents import Incident
from stackwatch.remote import Alert
from stackwatch.statuspage import LATENCY_RANGES, PAGE_SIZE, TargetHistory

STATES = ("down", "stale", "degraded", "pending", "up")
"""Target states, worst first (the list's order)."""

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
class Row:
    """One target in the status list."""

    name: str
    kind: str
    status: str
    reason: str
    history: TargetHistory
    last_probe: str


def status_page(rows: Iterable[Row], counts: dict[str, int], total: int, config_path: str, history_note: str,
                reload_error: str | None, page_no: int, alerts: list[Alert] | str | None,
                incidents: list[Incident], incidents_from: str, now: float) -> str:
    """``/``: the summary, the alerts, one row per target of this page, page links, incidents."""
    out = []
    for r in rows:
        h = r.history
        name = html.escape(r.name)
        out.append(
            f"<tr class='{r.status}'><td><a href='targets/{name}'>{name}</a></td>"
            f"<td>{html.escape(r.kind)}</td><td class='state'>{r.status}</td><td class='reason'>{html.escape(r.reason)}</td>"
            f"<td>{bar_svg_compact(h.quarter, title=f'last 24 hours: {pct(h.uptime_24h)}')}"
            f"<span class='note'>24h {pct(h.uptime_24h)}</span></td>"
            f"<td>{bar_svg_compact(h.day, width=270, title=f'last 90 days: {pct(h.uptime_90d)}')}"
            f"<span class='note'>90d {pct(h.uptime_90d)}</span></td>"
            f"<td>{html.escape(r.last_probe)}</td><td><a href='probe?target={name}&amp;debug=true'>debug</a></td></tr>")
    reload_note = ("" if reload_error is None else
                   f"<p class='down'>Last reload failed:<pre>{html.escape(reload_error)}</pre></p>")
    pages = (total + PAGE_SIZE - 1) // PAGE_SIZE
    nav = " ".join(f"<a href='?page={i}'>{i + 1}</a>" if i != page_no else f"<b>{i + 1}</b>" for i in range(pages)) \
        if pages > 1 else ""
    summary = "".join(f"<span class='{k}'><b class='state'>{k}</b> {counts[k]}</span>" for k in STATES if counts.get(k))
    body = (f"<h1>stackwatch status</h1><p class='summary'>{summary}</p>{reload_note}"
            f"<p class='note'>{total} targets from {html.escape(config_path)}. {html.escape(history_note)}</p>"
            f"{alerts_html(alerts)}<h2>Targets</h2><table><tr><th>Target</th><th>Kind</th><th>State</th><th>Reason</th>"
            f"<th>Last 24 hours</th><th>Last 90 days</th><th>Last probe</th><th></th></tr>{''.join(out)}</table>"
            f"<p>{nav}</p>{incidents_html(incidents, incidents_from, now)}")
    return page("stackwatch status", body)


def target_page(name: str, kind: str, every: float, status: str, reason: str, checks: list[tuple[str, str]],
                job: list[tuple[str, str]] | None, history: TargetHistory, latency: str | None,
                alerts: list[Alert] | str | None, incidents: list[Incident], incidents_from: str, now: float) -> str:
    """``/targets/NAME``: state and reason, failing checks (words, expression), a heartbeat's job,
    uptime bars, the latency section (``latency``: from :func:`latency_section`), incidents, alerts."""
    h = history
    checks_html = "".join(f"<li>{html.escape(words)} <code class='note'>{html.escape(check)}</code></li>"
                          for words, check in checks)
    job_html = ("<h2>Job</h2><table class='job'>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in job) + "</table>") if job else ""
    body = (f"<p><a href='../'>all targets</a></p><h1>{html.escape(name)} <span class='state' "
            f"style='color:{COLORS[status]}'>{status}</span></h1>"
            f"<p>{html.escape(kind)} probe every {every:g}s. {html.escape(reason)}</p>"
            + (f"<h2>Failing checks</h2><ul>{checks_html}</ul>" if checks else "")
            + job_html
            + f"<h2>Uptime</h2><p>24h {pct(h.uptime_24h)} · 90d {pct(h.uptime_90d)} "
            f"<span class='note'>({html.escape(h.source)})</span></p>{bar_svg(h.quarter, 576, 20, 'last 24 hours')}"
            f"<br>{bar_svg(h.day, 576, 20, 'last 90 days')}"
            + (latency or "")
            + incidents_html(incidents, incidents_from, now, show_target=False)
            + alerts_html(alerts, name))
    return page(f"{name}: {status}", body)


def latency_section(range_: str, points: list[tuple[float, float]], remote_error: str | None = None) -> str:
    """The latency section of a target's page: links to each range, then the chart: the last
    probes (``range_`` "probes") or the p95 over 1h/24h/7d; ``remote_error`` when Prometheus
    could not give that range (the last probes are drawn instead)."""
    links = " · ".join(f"<b>{r}</b>" if r == range_ else f"<a href='?latency={r}'>{r}</a>"
                       for r in ("probes", *LATENCY_RANGES))
    if range_ != "probes" and remote_error is None:
        return (f"<h2>Latency, p95 over the last {range_}</h2><p class='note'>{links}</p>"
                + latency_svg(points, label=f"p95 latency, last {range_}"))
    note = (f"<p class='note'>p95 over {range_} needs Prometheus: {html.escape(remote_error)}.</p>"
            if remote_error is not None else "")
    return (f"<h2>Probe latency (last {len(points)} probes)</h2><p class='note'>{links}</p>{note}"
            + latency_svg(points))
