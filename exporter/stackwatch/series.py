"""Per-target series: each target's lines, rendered by hand when a /metrics body is built.

``Lines`` keeps a result's own samples compactly (a shared shape and an array of values) and
renders a target's state into lines per family when the collector rebuilds the phase group the
target is in (a build renders a target at most once per new result: prometheus_client's
generate_latest costs 4-8 us per sample, this ~0.3 us); it knows every family in use.
``probe_body`` is /probe's fresh-registry body of one result.  The output is checked by
``promtool check metrics`` in the tests.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

from stackwatch.config import TargetConfig
from stackwatch.exposition import fmt_le, fmt_value, header, line, render_labels
from stackwatch.history import QUANTILES
from stackwatch.probes.base import FAMILIES, Family, Labels, ProbeResult
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
                  samples: Iterable[tuple[Family, Labels, float]] | None = None) -> dict[str, str]:
    """Gauge-type lines for one result, by family name (also /probe's fresh registry).
    ``samples`` defaults to the result's own when given a ProbeResult."""
    if samples is None:
        samples = outcome.samples if isinstance(outcome, ProbeResult) else ()
    samples = list(samples)
    shape = tuple([(fam.name, extra) for fam, extra, _ in samples])
    values = array("d", [value for _, _, value in samples])
    if len(set(shape)) != len(shape):
        shape, values = _first_of_each(shape, values)
    return _chunks(target, outcome, zip(shape, values), base_labels(target))


def _chunks(target: TargetConfig, outcome: Outcome | ProbeResult | None,
            samples: Iterable[tuple[tuple[str, Labels], float]], labels: str) -> dict[str, str]:
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
    for (name, extra), value in samples:  # each series once: the callers keep a probe's first sample of it
        lab = f"{labels},{render_labels(extra)}" if extra else labels
        texts = out.get(name)
        if texts is None:
            out[name] = [line(name, lab, value)]
        else:
            texts.append(line(name, lab, value))
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


SHAPES_MAX = 4096


def _first_of_each(shape: tuple[tuple[str, Labels], ...],
                   values: array[float]) -> tuple[tuple[tuple[str, Labels], ...], array[float]]:
    """The shape and values with each series' first sample only."""
    seen: set[tuple[str, Labels]] = set()
    keys: list[tuple[str, Labels]] = []
    kept = array("d")
    for key, value in zip(shape, values):
        if key not in seen:
            seen.add(key)
            keys.append(key)
            kept.append(value)
    return tuple(keys), kept


class Lines:
    """Keeps what each result adds to /metrics compactly, and renders targets' lines when a
    /metrics body is built (the collector asks per phase group of targets).

    Memory, per target: the values of its result's own samples in one array of doubles, beside
    a *shape* (which family and labels each value belongs to) shared by every target whose
    results have the same samples: thousands of HTTP targets share a handful of shapes.  The
    lines themselves are rendered only when a body is built, and kept only gzipped per group
    by the collector (bench/memory.py: 3.2 KB of rendered bytes per target before).
    """

    def __init__(self) -> None:
        self._dynamic: dict[str, Family] = {}  # config-declared families, learnt from samples
        self._families: set[str] = set()
        self._shapes: dict[tuple[tuple[str, Labels], ...], tuple[tuple[str, Labels], ...]] = {}

    def keep(self, state: TargetState, result: ProbeResult | None) -> None:
        """The Store's ``on_change`` callback: keep the result's samples as a shape and values
        (a series emitted twice by one probe is kept once: the exposition stays valid)."""
        if result is None:
            return
        samples = result.samples
        shape = tuple([(fam.name, extra) for fam, extra, _ in samples])
        values = array("d", [value for _, _, value in samples])
        if shape == state.shape:  # the usual case: the same series as the last result
            state.values = values
            return
        if len(set(shape)) != len(shape):
            shape, values = _first_of_each(shape, values)
        for fam, _, _ in samples:
            if fam.name not in self._families and fam.name not in FAMILIES:
                self._dynamic[fam.name] = fam
        kept = self._shapes.get(shape)
        if kept is None:
            if len(self._shapes) >= SHAPES_MAX:  # labels read from answers vary; bound the table
                self._shapes.clear()
            kept = self._shapes[shape] = shape
        state.shape, state.values = kept, values

    def chunks(self, state: TargetState) -> dict[str, str]:
        """A target's lines by family name, in the exposition's family order."""
        samples = zip(state.shape, state.values) if state.shape else ()
        chunks = _chunks(state.target, state.result, samples, state.labels)
        chunks[PROBES.name] = (line(PROBES.name, f'{state.labels},result="success"', state.successes)
                               + line(PROBES.name, f'{state.labels},result="failure"', state.failures))
        if state.by_reason:
            chunks[FAILURES.name] = "".join(
                line(FAILURES.name, f'{state.labels},reason="{r}"', n) for r, n in sorted(state.by_reason.items()))
        chunks[LATENCY.name] = _histogram(state)
        recent = _recent(state)
        if recent is not None:
            chunks[RECENT_LATENCY.name] = recent
        return chunks

    def render_into(self, states: Iterable[TargetState], into: dict[str, list[str]]) -> None:
        """Append the lines of ``states``, in their order, to ``into`` (family name -> texts)."""
        for state in states:
            for name, text in self.chunks(state).items():
                texts = into.get(name)
                if texts is None:
                    texts = into[name] = []
                    self._families.add(name)
                texts.append(text)

    def families_in_use(self) -> list[str]:
        core = [f.name for f in CORE_ORDER]
        return [n for n in core if n in self._families] + sorted(self._families - set(core))

    def family(self, name: str) -> Family:
        """The family of a name :meth:`families_in_use` gave."""
        return FAMILIES.get(name) or self._dynamic[name]
