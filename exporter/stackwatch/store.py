"""The result store: per target, the last outcome, accumulated counters and latency buckets.

State only: keeping a result's own samples is the ``on_change`` callback's job (the app passes
:meth:`stackwatch.series.Lines.keep`), rendering them into exposition lines the collector's, when
it builds a /metrics body.  The store never changes the results it is given; it keeps a small
summary of each (what the status page and the JSON API read) beside what the callback keeps.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from stackwatch.config import Config, TargetConfig
from stackwatch.buckets import bucket_index
from stackwatch.history import History
from stackwatch.incidents import IncidentLog
from stackwatch.probes.base import Labels, ProbeResult, Reason, failing_checks

# Exact edges at the documented thresholds (0.3 s and 0.5 s goals, 1 s, 2 s for L1, 5 s for L2),
# and dense enough around them that histogram_quantile's linear interpolation reports a p95 near
# a threshold within 10 % (tests/test_latency_buckets.py): 1.5, 2.5, 3 and 4 s around 2 s and 5 s.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5,
                                      3.0, 4.0, 5.0, 7.5, 10.0)


GROUP_SIZE = 200
MAX_GROUPS = 512


@dataclass(slots=True, frozen=True)
class Outcome:
    """What is kept of a probe result besides its samples."""

    success: bool
    reason: Reason | None
    message: str
    duration: float
    finished_at: float
    failing_checks: tuple[str, ...] = ()
    """Checks that failed although the probe succeeded (asset missing, account below floor...)."""

    @classmethod
    def of(cls, result: ProbeResult) -> Outcome:
        return cls(result.success, result.reason, result.message, result.duration, result.finished_at,
                   failing_checks(result.samples))

    def state(self, now: float, interval: float) -> str:
        """up, degraded (up, with failing checks), down, or stale (no probe for 3 intervals)."""
        if now - self.finished_at > 3 * interval:
            return "stale"
        if not self.success:
            return "down"
        return "degraded" if self.failing_checks else "up"


@dataclass(slots=True)
class TargetState:
    target: TargetConfig
    labels: str
    """The target's rendered base labels (target, kind and its own labels)."""
    result: Outcome | None = None
    successes: int = 0
    failures: int = 0
    by_reason: dict[str, int] | None = None
    """Failed probes by reason (made with the first failure: most targets never fail)."""
    # array, not list: an array of ints is not tracked by the cyclic GC
    buckets: array[int] = field(default_factory=lambda: array("I", bytes(4 * (len(LATENCY_BUCKETS) + 1))))
    """Probes per latency bucket (32 bits: 136 years of a probe a second)."""
    duration_sum: float = 0.0
    shape: tuple[tuple[str, Labels], ...] = ()
    """Family name and extra labels of each of the last result's own samples (series.Lines
    shares one tuple between every target whose results have the same samples)."""
    values: array[float] | None = None
    """The values of those samples, in the shape's order."""
    history: History | None = None
    """Probe history since start (status page without Prometheus); created with the first result."""
    group: int = 0
    """The phase group (Store.groups) the target is in."""
    since: float = 0.0
    """When the target's probes last went from succeeding to failing or back (Unix time; the
    first result's time until then): "down since" on the status page."""


class Store:
    """Latest outcomes and counters per target.  ``version`` changes whenever anything does."""

    def __init__(self, labels_of: Callable[[TargetConfig], str],
                 on_change: Callable[[TargetState, ProbeResult | None], None]):
        self.states: dict[str, TargetState] = {}
        self.version = 0
        self.groups: list[list[TargetState]] = []
        """Targets by the phase of their schedule (the scheduler's spread): the targets of one group
        get their results at about the same time, so a /metrics build between two probes of a
        target re-renders only the groups that changed (see group_versions)."""
        self.group_versions: list[int] = []
        self.generation = 0
        """Changes when the groups are made again (every load)."""
        self._labels_of = labels_of
        self._on_change = on_change
        self._by_name: tuple[int, list[TargetState]] | None = None
        self.incidents = IncidentLog()
        """Failing spells of every target (the status page's incident list without Prometheus)."""

    def set_targets(self, config: Config) -> None:
        """Keep state (counters, last result) of targets whose config is unchanged; drop removed ones."""
        for _ in self._set_targets(config):
            pass

    async def set_targets_async(self, config: Config, slice_size: int = 500) -> None:
        """The same, yielding to the event loop between slices: a reload to 10k changed targets
        does not stall scrapes and probes.  The new states replace the old ones at once, at the end."""
        for _ in self._set_targets(config, slice_size):
            await asyncio.sleep(0)

    def _set_targets(self, config: Config, slice_size: int = 0) -> Iterator[None]:
        new: dict[str, TargetState] = {}
        for i, t in enumerate(config.targets):
            if slice_size and i and i % slice_size == 0:
                yield
            old = self.states.get(t.name)
            if old is not None and old.target == t:
                new[t.name] = old
                continue
            state = TargetState(t, self._labels_of(t))
            if old is not None and old.target.kind == t.kind and old.labels == state.labels:
                # Same series identity: counters must not go backwards on a reload.
                state.successes, state.failures = old.successes, old.failures
                state.by_reason, state.buckets, state.duration_sum = old.by_reason, old.buckets, old.duration_sum
                state.result = old.result
                state.history = old.history
                state.since = old.since
            self._on_change(state, None)
            new[t.name] = state
        self.states = new
        self.incidents.keep_only(set(new), time.time())
        self._regroup()
        self.version += 1

    def by_name(self) -> list[TargetState]:
        """The targets sorted by name, sorted once per (re)load (at tens of thousands of targets
        a sort is tens of milliseconds the status page should not spend per view)."""
        if self._by_name is None or self._by_name[0] != self.generation:
            self._by_name = (self.generation, sorted(self.states.values(), key=lambda st: st.target.name))
        return self._by_name[1]

    def _regroup(self) -> None:
        n = len(self.states)
        count = max(1, min(MAX_GROUPS, n // GROUP_SIZE))
        groups: list[list[TargetState]] = [[] for _ in range(count)]
        for st in self.states.values():
            # the fraction of the interval the scheduler starts the target at (scheduler.spread)
            st.group = int(zlib.crc32(st.target.name.encode()) / 2**32 * count)
            groups[st.group].append(st)
        self.groups = groups
        self.group_versions = [0] * count
        self.generation += 1

    def record(self, name: str, result: ProbeResult) -> None:
        state = self.states.get(name)
        if state is None:  # target removed by a reload while its probe ran
            return
        if state.result is None or state.result.success != result.success:
            state.since = result.finished_at
        state.result = Outcome.of(result)
        self.incidents.record(name, result.finished_at, result.success,
                              "" if result.success else f"{(result.reason or Reason.INTERNAL).value}: {result.message}")
        if result.success:
            state.successes += 1
        else:
            state.failures += 1
            reason = (result.reason or Reason.INTERNAL).value
            if state.by_reason is None:
                state.by_reason = {}
            state.by_reason[reason] = state.by_reason.get(reason, 0) + 1
        if state.history is None:
            state.history = History()
        state.history.add(result.finished_at, result.success, result.duration)
        state.buckets[bucket_index(LATENCY_BUCKETS, result.duration)] += 1
        state.duration_sum += result.duration
        self._on_change(state, result)
        self.version += 1
        if state.group < len(self.group_versions):
            self.group_versions[state.group] += 1
