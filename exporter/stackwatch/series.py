"""Per-target series: the lines of each target's result, rendered by hand once per result.

A scrape only joins the bytes kept here (the measured reason /metrics stays fast at 10k
targets: prometheus_client's generate_latest costs 4-8 us per sample, joining pre-rendered lines
~0.2 us).  ``Lines`` renders a target's state into one bytes object plus offsets per family and
knows every family in use; ``probe_body`` is /probe's fresh-registry body of one result.  The
output is checked by ``promtool check metrics`` in the tests.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from stackwatch.config import TargetConfig
from stackwatch.exposition import fmt_le, fmt_value, header, line, render_labels
from stackwatch.history import QUANTILES
from stackwatch.probes.base import FAMILIES, Family, ProbeResult
from stackwatch.store import LATENCY_BUCKETS, Outcome, TargetState

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


@dataclass(frozen=True, slots=True)
class Layout:
    """The families of a target's rendered lines, in order.  Shared by every target rendering
    the same families (one object for thousands of targets)."""

    names: tuple[str, ...]
    index: dict[str, int]


class Lines:
    """Renders targets' lines when their state changes (the Store's ``render`` callback).

    Memory, per target: its lines as one bytes object plus an array of offsets (one per family)
    and a shared :class:`Layout`.
    """

    def __init__(self) -> None:
        self._dynamic: dict[str, Family] = {}  # config-declared families, learnt from samples
        self._families: set[str] = set()
        self._layouts: dict[tuple[str, ...], Layout] = {}

    def render(self, state: TargetState, result: ProbeResult | None) -> None:
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

    def families_in_use(self) -> list[str]:
        core = [f.name for f in CORE_ORDER]
        return [n for n in core if n in self._families] + sorted(self._families - set(core))

    def family(self, name: str) -> Family:
        """The family of a name :meth:`families_in_use` gave."""
        return FAMILIES.get(name) or self._dynamic[name]
