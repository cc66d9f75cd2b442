"""Incidents: the times a target's probes went from passing to failing and back.

Kept in memory from the probes' results (the status page without Prometheus; saved in the
state store with the status history, so they survive a restart), or read from Prometheus's
``stackwatch_probe_failure_reason`` history when ``--prometheus.url`` is set (that series exists
exactly while a target fails, and names the reason).  Bounded: the last MAX_CLOSED closed
incidents and one open incident per failing target.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

MAX_CLOSED = 500
REASON_CHARS = 200


@dataclass(slots=True)
class Incident:
    target: str
    start: float
    end: float | None
    """None while ongoing."""
    reason: str

    def duration(self, now: float) -> float:
        return (self.end if self.end is not None else now) - self.start


class IncidentLog:
    """Open incidents by target and the last MAX_CLOSED closed ones."""

    def __init__(self) -> None:
        self.open: dict[str, Incident] = {}
        self.closed: deque[Incident] = deque(maxlen=MAX_CLOSED)

    def record(self, target: str, at: float, success: bool, reason: str) -> None:
        """A probe result: a failure opens an incident (if none is open), a success closes it."""
        incident = self.open.get(target)
        if success:
            if incident is not None:
                incident.end = at
                self.closed.append(self.open.pop(target))
        elif incident is None:
            self.open[target] = Incident(target, at, None, reason[:REASON_CHARS])

    def keep_only(self, targets: set[str], now: float) -> None:
        """Close the open incidents of targets a reload removed (they end with the removal)."""
        for name in [n for n in self.open if n not in targets]:
            incident = self.open.pop(name)
            incident.end = now
            incident.reason = (incident.reason + " (target removed)")[:REASON_CHARS]
            self.closed.append(incident)

    def recent(self, since: float, target: str | None = None, limit: int = 50) -> list[Incident]:
        """Incidents open now or ended after ``since``, newest start first."""
        found = [i for i in self.open.values() if target is None or i.target == target]
        found += [i for i in self.closed if (target is None or i.target == target) and (i.end or 0) >= since]
        found.sort(key=lambda i: i.start, reverse=True)
        return found[:limit]

    def dump(self) -> list[list[Any]]:
        """[target, start, end or None, reason] per incident, oldest first (JSON for the state store)."""
        return [[i.target, i.start, i.end, i.reason] for i in (*self.closed, *self.open.values())]

    def restore(self, rows: Any, targets: set[str], now: float) -> int:
        """Incidents from :meth:`dump`'s rows (as read back from JSON); an incident that was open
        at the stop stays open for a target still configured (its next result closes or
        continues it).  Returns how many were restored; rows that do not fit are skipped."""
        if not isinstance(rows, list):
            return 0
        count = 0
        for row in rows[-(MAX_CLOSED + len(targets)):]:
            if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str)
                    and isinstance(row[1], (int, float)) and (row[2] is None or isinstance(row[2], (int, float)))
                    and isinstance(row[3], str)):
                continue
            incident = Incident(row[0], float(row[1]), None if row[2] is None else float(row[2]), row[3][:REASON_CHARS])
            if incident.end is None:
                if incident.target in targets and incident.target not in self.open:
                    self.open[incident.target] = incident
                    count += 1
                continue
            self.closed.append(incident)
            count += 1
        self.keep_only(targets, now)
        return count


def from_reason_series(series: list[tuple[dict[str, str], list[tuple[float, str]]]], step: float,
                       now: float) -> list[Incident]:
    """Incidents from a range query of ``stackwatch_probe_failure_reason == 1``: one series per
    (target, reason) with a point at every step the target failed.  Points of one target less
    than two steps apart make one incident (its reason: the first one seen); an incident ends
    one step after its last point, or is ongoing when that point is the last step of the range."""
    points: dict[str, list[tuple[float, str]]] = {}
    for labels, values in series:
        target = labels.get("target", "")
        reason = labels.get("reason", "")
        points.setdefault(target, []).extend((float(ts), reason) for ts, _ in values)
    out: list[Incident] = []
    for target, pts in points.items():
        pts.sort()
        start, last, reason = pts[0][0], pts[0][0], pts[0][1]
        for ts, r in pts[1:]:
            if ts - last > 1.5 * step:
                out.append(Incident(target, start, last + step, reason))
                start, reason = ts, r
            last = ts
        out.append(Incident(target, start, None if now - last <= 1.5 * step else last + step, reason))
    out.sort(key=lambda i: i.start, reverse=True)
    return out
