"""``stackwatch report``: the daily health report, built from live data in Prometheus.

    stackwatch report --prometheus URL [--alertmanager URL] [--since 24h]
                      [--format markdown|html] [--figure NAME=PROMQL ...]
                      [--send telegram --telegram-chat-id ID --telegram-token-file F]

Sections: overall state; services by state with reasons and failing checks; incidents (down
intervals with start, end and duration) and the alerts that fired; availability and error budget
per target against the 99.9 % SLO; latency percentiles against the documented goals (p50 < 0.5 s,
p95 < 2 s); the integration matrix (feature x service from the targets' labels, else kind x
target); business figures (``--figure``, any PromQL); urgent actions from the critical alerts
firing now.  Markdown for chat and repositories, HTML for e-mail; Telegram gets plain-text
messages within its 4096-character limit.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from stackwatch.durations import format_duration, human_duration, parse_duration
from stackwatch.history import RECENT_FAILURES, RECENT_MIN_PROBES, RECENT_WINDOW
from stackwatch.remote import Alertmanager, Limits, Prometheus, RemoteError, run_sync

SLO = 0.999
GOAL_P50 = 0.5
GOAL_P95 = 2.0
TELEGRAM_LIMIT = 4096

CHECKS = [
    ("stackwatch_http_assertion_success == 0", "assertion {assertion} fails"),
    ("stackwatch_algorand_asset_exists == 0", "asset {asset} does not exist"),
    ("stackwatch_algorand_account_above_floor == 0", "account {account} is below its floor"),
    ("stackwatch_algorand_network_match == 0", "node on the wrong network"),
    ("stackwatch_sql_schema_ok == 0", "schema expectations not met"),
    ("stackwatch_consistency_invariant_violated == 1", "source {source} breaks {invariant}"),
    ("stackwatch_consistency_field_agreement == 0", "sources disagree on {field}"),
]

log = logging.getLogger("stackwatch.report")


class PromError(Exception):
    pass


class Prom:
    """Prometheus for the report: the shared client (remote.py), with a longer deadline and a
    larger answer limit than the status page's (a day of every target's series)."""

    def __init__(self, url: str, timeout: float = 30.0, max_bytes: int = 128 * 1024 * 1024):
        self.url = url.rstrip("/")
        self.client = Prometheus(url, Limits(total=timeout, max_bytes=max_bytes))

    def _run(self, call: Any) -> list[dict[str, Any]]:
        async def once() -> list[Any]:
            try:
                return await call
            finally:
                await self.client.close()

        try:
            series = run_sync(once())
        except RemoteError as exc:
            raise PromError(exc.message) from None
        return [x.model_dump() for x in series]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        return self._run(self.client.query(expr, at))

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._run(self.client.query_range(expr, start, end, step))


RESOLUTION = 15.0
"""Seconds between the points incidents are read at: Prometheus's usual scrape interval, so an
outage of two failed scrapes (30 s) is found, and its start and end are within one interval."""
MAX_POINTS = 10_000
"""Points per series per range query (Prometheus refuses more than 11,000)."""


@dataclass
class Incident:
    target: str
    start: float
    end: float | None  # None: still down
    reason: str = ""

    def duration(self, now: float) -> float:
        return (self.end or now) - self.start


@dataclass
class Report:
    since: float
    generated_at: float
    states: dict[str, str] = field(default_factory=dict)  # target -> up|degraded|down
    kinds: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    checks: dict[str, list[str]] = field(default_factory=dict)
    availability: dict[str, float] = field(default_factory=dict)
    budget_spent: dict[str, float] = field(default_factory=dict)
    p50: dict[str, float] = field(default_factory=dict)
    p95: dict[str, float] = field(default_factory=dict)
    runbook_base: str = "https://github.com/stackwatch/stackwatch/blob/main/docs/runbook.md"
    """Runbook links on this base become links in the HTML report."""
    unanswered: set[str] = field(default_factory=set)
    """Targets without one successful probe in the window: no latency, the goal is not met."""
    incidents: list[Incident] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # alertname, target, severity, first, last
    figures: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    urgent: list[str] = field(default_factory=list)
    maintenance: list[str] = field(default_factory=list)
    excluded: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def overall(self) -> str:
        values = set(self.states.values())
        return "down" if "down" in values else "degraded" if "degraded" in values else "up" if values else "unknown"


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def build(prom: Prom, since: float, figures: list[tuple[str, str]] | None = None,
          alertmanager: str | None = None, now: float | None = None, maintenance: list[Any] | None = None,
          resolution: float = RESOLUTION, runbook_url: str | None = None) -> Report:
    now = time.time() if now is None else now
    window = format_duration(since)
    r = Report(since, now)
    if runbook_url:
        r.runbook_base = runbook_url.split("#", 1)[0]
    for s in prom.query("stackwatch_probe_success", now):
        m = s["metric"]
        t = m.get("target", "")
        r.states[t] = "up" if _value(s) == 1 else "down"
        r.kinds[t] = m.get("kind", "")
        r.labels[t] = {k: v for k, v in m.items() if k not in ("__name__", "target", "kind", "job", "instance")}
    for s in prom.query("stackwatch_probe_failure_reason == 1", now):
        r.reasons[s["metric"].get("target", "")] = s["metric"].get("reason", "")
    for expr, text in CHECKS:
        for s in prom.query(expr, now):
            t = s["metric"].get("target", "")
            try:
                r.checks.setdefault(t, []).append(text.format(**s["metric"]))
            except KeyError:
                r.checks.setdefault(t, []).append(text)
    # A flapping target (its last probe passed, too many of the recent ones failed) is degraded:
    # the status page's and the API's definition (stackwatch.history.RECENT_FAILURES).
    def probes(selector: str = "") -> str:
        return f"sum by (target) (increase(stackwatch_probes_total{selector}[{format_duration(RECENT_WINDOW)}]))"

    recent, failed = probes(), probes('{result="failure"}')
    for s in prom.query(f"{failed} / {recent} > {RECENT_FAILURES} and on (target) {recent} >= {RECENT_MIN_PROBES}", now):
        t = s["metric"].get("target", "")
        if r.states.get(t) == "up":
            r.checks.setdefault(t, []).append(
                f"{_value(s) * 100:.0f} % of its probes failed in the last {format_duration(RECENT_WINDOW)} "
                f"(over {RECENT_FAILURES * 100:.0f} %)")
    for t in r.checks:
        if r.states.get(t) == "up":
            r.states[t] = "degraded"
    for s in prom.query(f"avg by (target) (avg_over_time(stackwatch_probe_success[{window}]))", now):
        r.availability[s["metric"].get("target", "")] = _value(s)
    start = now - since
    for w in maintenance or []:
        if w.end <= start or w.start >= now:
            continue
        r.maintenance.append(f"{w.name} ({_when(max(w.start, start))} to {_when(min(w.end, now))}): "
                             + ", ".join(w.targets))
        for t in w.targets:
            r.excluded.setdefault(t, []).append((w.start, w.end))
    if r.excluded:
        # Maintenance is not downtime: availability from the samples outside the windows.
        sel = "|".join(sorted(r.excluded))
        for s in prom.query_range(f'stackwatch_probe_success{{target=~"{sel}"}}', start, now, 15.0):
            t = s["metric"].get("target", "")
            kept = [float(v) for ts, v in s["values"]
                    if not any(a <= float(ts) < b for a, b in r.excluded.get(t, []))]
            if kept:
                r.availability[t] = sum(kept) / len(kept)
            else:
                r.availability.pop(t, None)
    for t, a in r.availability.items():
        # Share of the 30-day error budget (0.1 % of 30 days) this window's failures used.
        r.budget_spent[t] = (1 - a) * since / ((1 - SLO) * 30 * 86400)
    for q, into in ((0.5, r.p50), (0.95, r.p95)):
        expr = (f"histogram_quantile({q}, sum by (target, le) "
                f"(increase(stackwatch_probe_duration_seconds_bucket[{window}])))")
        for s in prom.query(expr, now):
            v = _value(s)
            if not math.isnan(v):
                into[s["metric"].get("target", "")] = v
    # A latency goal is about answers: a target with no successful probe in the window (refused
    # in 2 ms, every time) has no latency to meet a goal with.
    answered = {s["metric"].get("target", "") for s in prom.query(
        f'sum by (target) (increase(stackwatch_probes_total{{result="success"}}[{window}])) > 0', now)}
    for into in (r.p50, r.p95):
        for t in [t for t in into if t not in answered]:
            del into[t]
            r.unanswered.add(t)
    r.incidents = _incidents(prom, now - since, now, r.reasons, resolution)
    r.alerts = _alerts(prom, now - since, now)
    for name, expr in figures or []:
        cur = prom.query(f"sum({expr})", now)
        old = prom.query(f"sum({expr})", now - since)
        r.figures.append((name, _value(cur[0]) if cur else None, _value(old[0]) if old else None))
    firing_now = _firing_now(prom, now, alertmanager)
    for a in firing_now:
        labels = a["labels"]
        if labels.get("severity") == "critical" and labels.get("alertname") != "StackwatchWatchdog":
            desc = a.get("annotations", {}).get("description", "")
            runbook = _runbook(a.get("annotations", {}).get("runbook_url", ""), runbook_url)
            r.urgent.append(f"{labels.get('alertname')} on {labels.get('target', labels.get('instance', '?'))}: "
                            f"{desc}" + (f" (runbook: {runbook})" if runbook else ""))
    return r


def _runbook(url: str, base: str | None) -> str:
    """The alert's runbook link, on ``base`` (--runbook.url: where your copy of docs/runbook.md
    is served) when given: the alert's anchor is kept."""
    if not base or not url:
        return url
    anchor = url.partition("#")[2]
    return base.split("#", 1)[0] + (f"#{anchor}" if anchor else "")


def _step(since: float) -> float:
    return max(15.0, since / 1000)


def _incidents(prom: Prom, start: float, end: float, reasons: dict[str, str],
               resolution: float = RESOLUTION) -> list[Incident]:
    """Outages at scrape resolution.  Only the failing points are asked for (``== 0`` drops the
    others, so a day of a healthy fleet costs almost nothing), in chunks of MAX_POINTS; consecutive
    failing points make one incident, which ends one step after its last failing point (or is
    ongoing when that is the window's last)."""
    down: dict[str, list[float]] = {}
    t0 = start
    while t0 <= end:
        t1 = min(end, t0 + resolution * (MAX_POINTS - 1))
        for s in prom.query_range("stackwatch_probe_success == 0", t0, t1, resolution):
            down.setdefault(s["metric"].get("target", ""), []).extend(float(ts) for ts, _ in s["values"])
        t0 = t1 + resolution
    out = []
    for target, points in down.items():
        points.sort()
        first = prev = points[0]
        for ts in points[1:] + [None]:  # type: ignore[list-item]
            if ts is not None and ts - prev <= resolution * 1.5:
                prev = ts
                continue
            ongoing = prev >= end - resolution * 1.5
            out.append(Incident(target, first, None if ongoing else prev + resolution,
                                reasons.get(target, "") if ongoing else ""))
            if ts is not None:
                first = prev = ts
    return sorted(out, key=lambda i: i.start)


def _alerts(prom: Prom, start: float, end: float) -> list[dict[str, Any]]:
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in prom.query_range('ALERTS{alertstate="firing"}', start, end, _step(end - start)):
        m = s["metric"]
        if m.get("alertname") == "StackwatchWatchdog":
            continue
        key = (m.get("alertname", ""), m.get("target", m.get("instance", "")), m.get("severity", ""))
        times = [float(ts) for ts, _ in s["values"]]
        entry = out.setdefault(key, {"alertname": key[0], "target": key[1], "severity": key[2],
                                     "first": min(times), "last": max(times)})
        entry["first"], entry["last"] = min(entry["first"], min(times)), max(entry["last"], max(times))
    return sorted(out.values(), key=lambda a: (a["severity"] != "critical", a["first"]))


def _firing_now(prom: Prom, now: float, alertmanager: str | None) -> list[dict[str, Any]]:
    if alertmanager:
        client = Alertmanager(alertmanager, Limits(total=15.0, max_bytes=64 * 1024 * 1024))

        async def firing() -> list[Any]:
            try:
                return await client.alerts(silenced="false", inhibited="false")
            finally:
                await client.close()

        try:
            return [a.model_dump() for a in run_sync(firing())]
        except RemoteError as exc:
            log.warning("%s; firing alerts from Prometheus instead", exc.message)
    out = []
    for s in prom.query('ALERTS{alertstate="firing"}', now):
        out.append({"labels": s["metric"], "annotations": {}})
    return out


# --------------------------------------------------------------------------- rendering


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v * 100:.{digits}f}%"


def _budget(spent: float | None) -> str:
    """The share of the 30-day error budget this window spent, and what is left, capped."""
    if spent is None:
        return "n/a"
    if spent >= 1:
        return f"exhausted ({spent * 100:.0f} % of it spent in this window)"
    return f"{spent * 100:.1f} % spent, {(1 - spent) * 100:.1f} % left"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.0f} ms"


def _matrix(r: Report) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    with_labels = [t for t in r.states if "feature" in r.labels.get(t, {}) and "service" in r.labels.get(t, {})]
    rank = {"down": 0, "degraded": 1, "up": 2}
    cells: dict[tuple[str, str], str] = {}
    if with_labels:
        for t in with_labels:
            key = (r.labels[t]["service"], r.labels[t]["feature"])
            if key not in cells or rank[r.states[t]] < rank[cells[key]]:
                cells[key] = r.states[t]
    else:
        for t, st in r.states.items():
            cells[(t, r.kinds.get(t, ""))] = st
    rows = sorted({k[0] for k in cells})
    cols = sorted({k[1] for k in cells})
    return rows, cols, cells


_MD_SPECIAL = re.compile(r"([\\`*\[\]|~#])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _md(value: object) -> str:
    """Text stackwatch did not write (target names, reasons, labels, annotations) as inert
    markdown: on one line, every markup character escaped, HTML as entities."""
    text = _CONTROL.sub(" ", str(value))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _md_plain(text: str) -> str:
    """Markdown text back to what it says (the HTML report escapes it again for HTML)."""
    text = re.sub(r"\\(.)", r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def markdown(r: Report) -> str:
    now = r.generated_at
    by_state = {s: sorted(t for t, st in r.states.items() if st == s) for s in ("down", "degraded", "up")}
    lines = [f"# Health report, {_when(now - r.since)} to {_when(now)}", "",
             f"**Overall: {r.overall.upper()}**: {len(by_state['up'])} up, {len(by_state['degraded'])} degraded, "
             f"{len(by_state['down'])} down of {len(r.states)} services.", ""]
    if r.urgent:
        lines += ["## Urgent actions", ""] + [f"- {_md(u)}" for u in r.urgent] + [""]
    lines += ["## Services", ""]
    for t in by_state["down"]:
        lines.append(f"- DOWN **{_md(t)}** ({_md(r.kinds.get(t))}): {_md(r.reasons.get(t, 'failing'))}")
    for t in by_state["degraded"]:
        lines.append(f"- DEGRADED **{_md(t)}** ({_md(r.kinds.get(t))}): {_md('; '.join(r.checks.get(t, [])))}")
    for t in by_state["up"]:
        lines.append(f"- up **{_md(t)}** ({_md(r.kinds.get(t))})")
    lines += ["", f"## Incidents ({len(r.incidents)})", ""]
    if not r.incidents:
        lines.append("None.")
    for i in r.incidents:
        end = _when(i.end) if i.end else "ongoing"
        lines.append(f"- **{_md(i.target)}** down from {_when(i.start)} to {end} ({human_duration(i.duration(now))})"
                     + (f": {_md(i.reason)}" if i.reason else ""))
    lines += ["", f"## Alerts fired ({len(r.alerts)})", ""]
    if not r.alerts:
        lines.append("None.")
    for a in r.alerts:
        lines.append(f"- {_md(a['alertname'])} ({_md(a['severity'])}) on {_md(a['target'])}: first {_when(a['first'])}, "
                     f"last {_when(a['last'])}")
    lines += ["", f"## Availability (SLO {SLO * 100:.1f} % over 30 days)", "",
              "| service | availability | 30-day error budget |", "|---|---|---|"]
    for t in sorted(r.availability):
        mark = " (maintenance excluded)" if t in r.excluded else ""
        lines.append(f"| {_md(t)}{mark} | {_pct(r.availability[t])} | {_budget(r.budget_spent.get(t))} |")
    if r.maintenance:
        lines += ["", "Maintenance windows (not counted as downtime):"] + [f"- {_md(m)}" for m in r.maintenance]
    lines += ["", f"## Latency (goals: p50 < {GOAL_P50 * 1000:.0f} ms, p95 < {GOAL_P95:.0f} s)", "",
              "| service | p50 | p95 | goals |", "|---|---|---|---|"]
    for t in sorted(set(r.p50) | set(r.p95) | r.unanswered):
        if t in r.unanswered:
            lines.append(f"| {_md(t)} | n/a | n/a | MISSED (no successful probe) |")
            continue
        met = (r.p50.get(t, 0) < GOAL_P50) and (r.p95.get(t, 0) < GOAL_P95)
        lines.append(f"| {_md(t)} | {_ms(r.p50.get(t))} | {_ms(r.p95.get(t))} | {'met' if met else 'MISSED'} |")
    rows, cols, cells = _matrix(r)
    lines += ["", "## Integration matrix", "", "| | " + " | ".join(_md(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for row in rows:
        lines.append(f"| {_md(row)} | " + " | ".join(cells.get((row, c), "") for c in cols) + " |")
    if r.figures:
        lines += ["", "## Business figures", "", "| figure | now | change |", "|---|---|---|"]
        for name, cur, old in r.figures:
            change = "n/a" if cur is None or old is None else f"{cur - old:+g}"
            lines.append(f"| {_md(name)} | {'n/a' if cur is None else f'{cur:g}'} | {change} |")
    return "\n".join(lines) + "\n"


STATE_COLOURS = {"DOWN": "#c62828", "DEGRADED": "#ef8f00", "UP": "#2e7d32", "MISSED": "#c62828"}
RULES_RUNBOOK = "https://github.com/stackwatch/stackwatch/blob/main/docs/runbook.md"
"""The runbook base the shipped rules' runbook_url annotations use."""


def _decorate(text: str, runbook_base: str) -> str:
    """HTML-escaped report text with state words in colour and the runbook links the report
    itself appended made links.  Only URLs on the runbook base are linked: a label or reason
    that carries "(runbook: http://elsewhere)" stays text."""
    base = re.escape(html.escape(runbook_base))
    text = re.sub(rf"\(runbook: ({base}(?:#[\w-]+)?)\)", r'(<a href="\1">runbook</a>)', text)
    for word, colour in STATE_COLOURS.items():
        text = re.sub(rf"(?<![\w-]){word}(?![\w-])", f'<b style="color:{colour}">{word}</b>', text)
    return text


def _bars_svg(rows: list[tuple[str, float, str, str]], scale_max: float, goal: float | None, goal_text: str,
              axis: list[tuple[float, str]], scale_min: float = 0.0) -> str:
    """Horizontal bars, one per (label, value, colour, value text), on a scale from scale_min to
    scale_max, with the goal as a dashed line.  Inline SVG with inline attributes only."""
    if not rows:
        return ""
    label_w, bar_w, row_h = 170, 360, 18
    width, height = label_w + bar_w + 90, 24 + row_h * len(rows) + 18

    def x(v: float) -> float:
        return label_w + max(0.0, min(1.0, (v - scale_min) / (scale_max - scale_min))) * bar_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(goal_text)}" style="font-family:sans-serif;font-size:11px">']
    for i, (label, value, colour, text) in enumerate(rows):
        y = 20 + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{html.escape(label[:28])}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{x(value) - label_w:.1f}" height="{row_h - 5}" '
                     f'fill="{colour}"><title>{html.escape(label)}: {html.escape(text)}</title></rect>'
                     f'<text x="{x(value) + 4:.1f}" y="{y + 12}">{html.escape(text)}</text>')
    bottom = 20 + row_h * len(rows)
    for v, text in axis:
        parts.append(f'<text x="{x(v):.1f}" y="{bottom + 14}" text-anchor="middle" fill="#555">{text}</text>')
    if goal is not None:
        parts.append(f'<line x1="{x(goal):.1f}" y1="14" x2="{x(goal):.1f}" y2="{bottom}" stroke="#c62828" '
                     f'stroke-dasharray="4,3"/><text x="{x(goal):.1f}" y="11" text-anchor="middle" '
                     f'fill="#c62828">{html.escape(goal_text)}</text>')
    return "".join(parts) + "</svg>"


def availability_svg(r: Report) -> str:
    """Availability per service on a 99 %..100 % scale (below 99 % the bar is empty), the SLO marked."""
    rows = []
    for t in sorted(r.availability, key=lambda t: r.availability[t]):
        a = r.availability[t]
        colour = "#2e7d32" if a >= SLO else "#ef8f00" if a >= 0.99 else "#c62828"
        rows.append((t, a, colour, _pct(a)))
    return _bars_svg(rows, 1.0, SLO, f"SLO {SLO * 100:.1f} %", [(0.99, "99 %"), (0.995, "99.5 %"), (1.0, "100 %")],
                     scale_min=0.99)


def latency_svg(r: Report) -> str:
    """p95 per service against the p95 goal (a service without a successful probe is not drawn)."""
    values = {t: v for t, v in r.p95.items() if t not in r.unanswered}
    if not values:
        return ""
    top = max(max(values.values()), GOAL_P95) * 1.1
    rows = [(t, v, "#2e7d32" if v < GOAL_P95 else "#c62828", _ms(v)) for t, v in sorted(values.items())]
    return _bars_svg(rows, top, GOAL_P95, f"p95 goal {GOAL_P95:g} s",
                     [(0.0, "0"), (top / 2, _ms(top / 2)), (top, _ms(top))])


def to_html(r: Report) -> str:
    """The report as an HTML e-mail body (inline styles, no external assets; the availability
    and latency tables followed by small inline SVG charts)."""
    out = ['<!doctype html><html><head><meta charset="utf-8"><title>Health report</title></head>'
           '<body style="font-family:sans-serif">']
    charts = {"Availability": availability_svg(r), "Latency": latency_svg(r)}
    section = ""
    in_table = False
    for line in markdown(r).splitlines():
        if line.startswith("## "):
            section = line[3:].split(" ", 1)[0]
        if line.startswith("|"):
            if set(line) <= set("|-"):
                continue
            cells = [_decorate(html.escape(_md_plain(c.strip())), r.runbook_base)
                     for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if not in_table:
                out.append('<table style="border-collapse:collapse">')
                in_table = True
            out.append("<tr>" + "".join(f'<td style="border:1px solid #ccc;padding:2px 6px">{c}</td>'
                                        for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>" + charts.pop(section, ""))
            in_table = False
        text = _decorate(html.escape(_md_plain(re.sub(r"(?<!\\)\*\*", "", line))), r.runbook_base)
        if line.startswith("# "):
            out.append(f"<h1>{text[2:]}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{text[3:]}</h2>")
        elif line.startswith("- "):
            out.append(f"<p>&bull; {text[2:]}</p>")
        elif line:
            out.append(f"<p>{text}</p>")
    if in_table:
        out.append("</table>" + charts.pop(section, ""))
    return "".join(out) + "</body></html>\n"


def telegram_chunks(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split at line breaks into messages of at most ``limit`` characters (a longer line is cut)."""
    chunks: list[str] = []
    current = ""
    for line in text.splitlines():
        line = line if len(line) < limit else line[: limit - 2] + "…"
        if len(current) + len(line) + 1 > limit:
            chunks.append(current)
            current = ""
        current += line + "\n"
    if current.strip():
        chunks.append(current)
    return chunks


def send_telegram(text: str, token: str, chat_id: str, api_url: str = "https://api.telegram.org") -> int:
    sent = 0
    for chunk in telegram_chunks(text):
        body = json.dumps({"chat_id": chat_id, "text": chunk, "disable_web_page_preview": True}).encode()
        req = urllib.request.Request(f"{api_url.rstrip('/')}/bot{token}/sendMessage", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as resp:
            if not json.loads(resp.read()).get("ok"):
                raise PromError("Telegram refused the message")
        sent += 1
    return sent


def main(argv: list[str]) -> int:
    import argparse
    import sys
    from pathlib import Path

    p = argparse.ArgumentParser(prog="stackwatch report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prometheus", required=True, help="Prometheus base URL")
    p.add_argument("--alertmanager", default=None, help="Alertmanager base URL (urgent actions from its alerts)")
    p.add_argument("--since", default="24h", help="the window (default: %(default)s)")
    p.add_argument("--format", choices=["markdown", "html"], default="markdown")
    p.add_argument("--runbook.url", dest="runbook_url", default=None,
                   help="where your copy of docs/runbook.md is served: runbook links point there (anchors kept)")
    p.add_argument("--resolution", default="15s",
                   help="how finely incidents are found: Prometheus's scrape interval (default: %(default)s)")
    p.add_argument("--figure", action="append", default=[], metavar="NAME=PROMQL",
                   help="a business figure: its value now and its change over the window")
    p.add_argument("--config.file", dest="config_file", default=None,
                   help="stackwatch's config: its maintenance windows are left out of availability")
    p.add_argument("--send", choices=["telegram"], default=None)
    p.add_argument("--telegram-chat-id", default=None)
    p.add_argument("--telegram-token-file", default=None)
    p.add_argument("--telegram-api-url", default="https://api.telegram.org")
    args = p.parse_args(argv)
    try:
        since = parse_duration(args.since)
        resolution = parse_duration(args.resolution)
    except ValueError as exc:
        print(f"stackwatch report: --since/--resolution: {exc}", file=sys.stderr)
        return 2
    if resolution <= 0:
        print("stackwatch report: --resolution must be more than 0", file=sys.stderr)
        return 2
    figures = []
    for f in args.figure:
        name, sep, expr = f.partition("=")
        if not sep or not name.strip() or not expr.strip():
            print(f"stackwatch report: --figure must be NAME=PROMQL, got {f!r}", file=sys.stderr)
            return 2
        figures.append((name.strip(), expr.strip()))
    windows: list[Any] = []
    if args.config_file:
        from stackwatch.config import ConfigError
        from stackwatch.kinds import load_config

        try:
            windows = list(load_config(args.config_file).maintenance)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            return 1
    try:
        report = build(Prom(args.prometheus), since, figures, args.alertmanager, maintenance=windows,
                       resolution=resolution, runbook_url=args.runbook_url)
    except PromError as exc:
        print(f"stackwatch report: {exc}", file=sys.stderr)
        return 1
    text = markdown(report) if args.format == "markdown" else to_html(report)
    if args.send == "telegram":
        if not args.telegram_chat_id or not args.telegram_token_file:
            print("stackwatch report: --send telegram needs --telegram-chat-id and --telegram-token-file",
                  file=sys.stderr)
            return 2
        token = Path(args.telegram_token_file).read_text().strip()
        try:
            # Telegram gets plain text (no parse mode): the markdown with its escapes undone
            n = send_telegram(_md_plain(markdown(report)), token, args.telegram_chat_id, args.telegram_api_url)
        except (OSError, PromError) as exc:
            print(f"stackwatch report: sending to Telegram failed: {type(exc).__name__}", file=sys.stderr)
            return 1
        print(f"sent the report to Telegram in {n} message(s)", file=sys.stderr)
    sys.stdout.write(text)
    return 0
