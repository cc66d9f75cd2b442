"""The probe contract shared by every probe kind.

A probe kind is one module in this package that defines::

    KIND = ProbeKind(name="http", config_model=HTTPTarget, probe=probe_http)

where ``probe_http(target, ctx) -> ProbeResult`` is a coroutine.  The kinds stackwatch runs
are listed in :mod:`stackwatch.kinds`.  A kind that keeps anything between probes (clients,
engines, thread pools, history) declares ``state=SomeState``: the exporter creates one
:class:`KindState` per kind, hands it to every probe as ``ctx.state``, tells it about every
(re)load and closes it at shutdown.  Nothing is kept in module globals.
  The scheduler
gives it a :class:`ProbeContext` holding the deadline; the probe records samples
and log lines on the context and returns ``ctx.success()`` or
``ctx.failure(reason, message)``.  It may also raise :class:`ProbeFailure`.
Anything else it raises, a hang past the deadline, or a return value that is
not a ProbeResult becomes a failed result; it never reaches the scheduler.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stackwatch.config import TargetConfig
from stackwatch.redact import mask_forms, redact_url


class Reason(StrEnum):
    """Why a probe failed: a fixed vocabulary, so the `reason` label stays bounded."""

    TIMEOUT = "timeout"
    DNS = "dns"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION = "connection_error"
    TLS = "tls"
    HTTP_STATUS = "http_status"
    BODY_TOO_LARGE = "body_too_large"
    BODY_REGEXP = "body_regexp"
    INVALID_JSON = "invalid_json"
    ASSERTION = "assertion"
    AUTH = "auth"
    NOT_CONFIGURED = "not_configured"
    DRIVER_MISSING = "driver_missing"
    CONNECT_TIMEOUT = "connect_timeout"
    UNKNOWN_DATABASE = "unknown_database"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    STATEMENT_TIMEOUT = "statement_timeout"
    DATABASE_MISSING = "database_missing"
    QUERY_ERROR = "query_error"
    SCHEMA = "schema"
    MIGRATION = "migration"
    WRONG_NETWORK = "wrong_network"
    NOT_SYNCED = "not_synced"
    TOO_MANY_SERIES = "too_many_series"
    EXTRACTION = "extraction"
    INVARIANT = "invariant"
    DISAGREEMENT = "disagreement"
    FILE_ERROR = "file_error"
    MISSED = "missed"
    FAILED = "failed"
    RUNNING_TOO_LONG = "running_too_long"
    INTERNAL = "internal_error"


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family a probe may emit: full name, type and help text."""

    name: str
    type: str  # gauge | counter | info-as-gauge
    help: str
    healthy: float | None = None
    """For a check (asset exists, account above its floor, assertion holds...): the value that
    means the check passes.  Any other value names a failing check: a target whose probe
    succeeds with failing checks is *degraded* on the status page."""
    failing: str = ""
    """A failing check in words, with the sample's labels in braces: "asset {asset} does not exist"."""

    def __post_init__(self) -> None:
        FAMILIES.setdefault(self.name, self)

    def check_name(self, labels: tuple[tuple[str, str], ...] | dict[str, str]) -> str:
        pairs = labels.items() if isinstance(labels, dict) else labels
        short = self.name.removeprefix("stackwatch_")
        inner = ",".join(f'{k}="{v}"' for k, v in pairs)
        return f"{short}{{{inner}}}" if inner else short


class DynamicFamily(Family):
    """A family declared by a config file (a JSON or SQL metric), not by stackwatch's code.

    Not registered globally: it lives as long as the config that declared it, and its HELP
    and TYPE reach /metrics through the samples that carry it.
    """

    def __post_init__(self) -> None:
        pass


FAMILIES: dict[str, Family] = {}
"""Families declared in stackwatch's code, so /metrics can write HELP and TYPE once per family."""

METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_metric_name(name: str, mtype: str) -> None:
    """Prometheus naming for a config-declared metric; ValueError says what is wrong."""
    if not METRIC_NAME.match(name):
        raise ValueError(f'metric name "{name}" must match [a-zA-Z_][a-zA-Z0-9_]*')
    if mtype == "counter" and not name.endswith("_total"):
        raise ValueError(f'counter "{name}" must end in _total (Prometheus naming)')
    if mtype == "gauge" and name.endswith("_total"):
        raise ValueError(f'gauge "{name}" must not end in _total; use type: counter for counters')


def declare_families(namespace: str, metrics: list[tuple[str, str, str]]) -> dict[str, DynamicFamily]:
    """Families stackwatch_<namespace>_<name> for (name, type, help) triples declared in a config."""
    if not METRIC_NAME.match(namespace):
        raise ValueError(f'namespace "{namespace}" must match [a-zA-Z_][a-zA-Z0-9_]*')
    out: dict[str, DynamicFamily] = {}
    for name, mtype, help_text in metrics:
        full = f"stackwatch_{namespace}_{name}"
        if full in out:
            raise ValueError(f'metric "{name}" is defined twice')
        if full in FAMILIES:
            raise ValueError(f'metric name "{full}" is one of stackwatch\'s own; choose another name or namespace')
        out[full] = DynamicFamily(full, mtype, help_text)
    return out

Labels = tuple[tuple[str, str], ...]


MAX_FAILING_CHECKS = 8
_CHECK = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def check_words(check: str) -> str:
    """A failing check (as failing_checks names it) in words, for people: "asset pam-token does
    not exist" for ``algorand_asset_exists{asset="pam-token"}``; the name itself when its family
    has no words."""
    m = _CHECK.match(check)
    fam = (FAMILIES.get("stackwatch_" + m.group(1)) or FAMILIES.get(m.group(1))) if m else None
    if fam is None or not fam.failing:
        return check
    labels = {k: v.replace('\\"', '"') for k, v in _PAIR.findall(m.group(2) or "")}  # type: ignore[union-attr]
    try:
        return fam.failing.format(**labels)
    except (KeyError, IndexError, ValueError):
        return check


def failing_checks(samples: list[tuple[Family, Any, float]]) -> tuple[str, ...]:
    """Names of the checks among ``samples`` that do not have their healthy value (bounded)."""
    out: list[str] = []
    for fam, labels, value in samples:
        if fam.healthy is not None and value != fam.healthy:
            out.append(fam.check_name(labels))
            if len(out) >= MAX_FAILING_CHECKS:
                break
    return tuple(out)


@dataclass(slots=True)
class ProbeResult:
    success: bool
    reason: Reason | None = None
    message: str = ""
    duration: float = 0.0
    samples: list[tuple[Family, Labels, float]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    finished_at: float = 0.0  # unix time


class ProbeFailure(Exception):
    """Raise inside a probe to end it with a reason; samples recorded so far are kept."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


MAX_LABEL_VALUE = 256
_NON_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


def release_exception(error: BaseException | None) -> None:
    """Let reference counting free a caught exception that has been turned into a reason and a
    message.  Drivers keep the exception in a local of a frame its own traceback holds (SQLAlchemy
    re-raising, psycopg's cancellation...), a cycle that would otherwise wait for the cyclic GC,
    and past the exporter's periodic freeze (app.py) for its next full sweep.  Clears the frames'
    locals and the traceback, along the cause/context chain."""
    seen = 0
    while error is not None and seen < 8:
        if error.__traceback__ is not None:
            traceback.clear_frames(error.__traceback__)
            error.__traceback__ = None
        error = error.__cause__ or error.__context__
        seen += 1


def sanitize_label_value(value: Any) -> str:
    """Any JSON value as a printable label value of bounded length."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    text = _NON_PRINTABLE.sub("?", text)
    return text if len(text) <= MAX_LABEL_VALUE else text[: MAX_LABEL_VALUE - 3] + "..."


class KindState:
    """What one probe kind keeps between probes, owned by the exporter (one per kind)."""

    def reload(self, targets: list[Any]) -> None:
        """Called with the kind's targets after every (re)load: release what removed targets held."""

    async def close(self) -> None:
        """Called once at shutdown: close clients, dispose engines, stop pools."""

    def use_store(self, store: Any) -> None:
        """Called once before the first reload with the exporter's durable state store
        (stackwatch.state.StateStore), for kinds whose state must survive a restart."""


class ProbeContext:
    """What a probe gets besides its config: the deadline, its kind's state, and somewhere to
    put results."""

    __slots__ = ("target", "deadline", "samples", "log_lines", "verbose", "state", "latency", "_start", "_forms")

    def __init__(self, target: TargetConfig, timeout: float, verbose: bool = True, state: Any = None):
        self.target = target
        self.state = state
        """The kind's :class:`KindState` (None for kinds without one)."""
        self.verbose = verbose
        """Keep the debug log.  Scheduled probes do not: nothing reads it, and building and
        scrubbing its lines is a measurable share of a probe's CPU."""
        self._start = time.monotonic()
        self.deadline = self._start + timeout
        self.samples: list[tuple[Family, Labels, float]] = []
        self.log_lines: list[str] = []
        self.latency: float | None = None
        """Set by a probe that measured its target's latency itself (the HTTP kinds: from the
        protocol callbacks' timestamps); the result's duration then is this, not the wall time
        of the probe coroutine, which includes the exporter's own queueing."""
        self._forms: list[str] | None = None

    def forms(self) -> list[str]:
        if self._forms is None:
            self._forms = self.target.secret_forms()
        return self._forms

    def remaining(self) -> float:
        """Seconds left before the hard deadline (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def sample(self, family: Family, value: float, /, **labels: str) -> None:
        if labels:
            forms = self.forms()
            if forms:  # a label value read from a response may echo a secret this target sent
                labels = {k: mask_forms(v, forms) for k, v in labels.items()}
        self.samples.append((family, tuple(labels.items()), float(value)))

    def log(self, message: str) -> None:
        if self.verbose and len(self.log_lines) < 200:
            elapsed = time.monotonic() - self._start
            self.log_lines.append(f"{elapsed * 1000:8.1f}ms {self.scrub(message)}")

    def scrub(self, text: str) -> str:
        return redact_url(mask_forms(text, self.forms()))

    def success(self) -> ProbeResult:
        return ProbeResult(True, None, "", samples=self.samples, log=self.log_lines)

    def failure(self, reason: Reason, message: str) -> ProbeResult:
        message = self.scrub(message)
        self.log(f"probe failed: {reason.value}: {message}")
        return ProbeResult(False, reason, message, samples=self.samples, log=self.log_lines)


BlockingProbe = Callable[[float, list[str], list[tuple[Family, dict[str, str], float]]],
                         tuple["Reason | None", str]]
"""``fn(deadline, log, samples) -> (failure reason or None, message)``, run in a thread."""


async def run_blocking(ctx: ProbeContext, runner: Any, fn: BlockingProbe) -> ProbeResult:
    """Run a blocking probe body with ``runner`` (a probes.blocking.BlockingRunner: its own
    thread, abandoned at the deadline) and replay its log lines and samples into ``ctx``.  The
    body appends as it goes, so a failure half-way keeps what was learnt; it may also raise
    :class:`ProbeFailure`."""
    log: list[str] = []
    samples: list[tuple[Family, dict[str, str], float]] = []
    try:
        reason, message = await runner.run(lambda: fn(ctx.deadline, log, samples), ctx.deadline)
    except ProbeFailure as exc:
        reason, message = exc.reason, exc.message
        release_exception(exc)  # it crossed a thread: its traceback holds that thread's frames
    finally:
        for line in list(log):
            ctx.log(line)
        for fam, labels, value in list(samples):
            ctx.sample(fam, value, **labels)
    if reason is not None:
        return ctx.failure(reason, message)
    return ctx.success()


ProbeFn = Callable[[Any, ProbeContext], Awaitable[ProbeResult]]


@dataclass(frozen=True)
class ProbeKind:
    name: str
    config_model: type[TargetConfig]
    probe: ProbeFn
    max_concurrent: int | None = None
    """Optional per-kind bound on probes in flight, below the global one (e.g. SQL)."""
    state: Callable[[], KindState] | None = None
    """Creates the kind's state (see :class:`KindState`); None if the kind keeps nothing."""
