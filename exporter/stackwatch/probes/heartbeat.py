"""kind: heartbeat -- a dead-man's switch for cron jobs and workers that report in.

A job calls ``POST /push/NAME`` when it succeeds (``/push/NAME/start`` when it starts,
``/push/NAME/fail`` or ``/push/NAME/<exit code>`` when it ends), with the check's token
(stackwatch.push).  Each report is stored in the state store (stackwatch.state) before it is
acknowledged, so it survives a restart, and with a shared store any replica may take it.

The probe reads the check's stored state and says, at every interval, whether the job is on
time: it fails with reason ``missed`` once the next run was due (by the schedule) and the grace
has passed, ``failed`` when the last run reported a failure, ``running_too_long`` when a
started run has not ended within ``max_run_time``.  Between the expected time and the end of
the grace the check is *late* (degraded, not failed).  The schedule is ``every: 5m`` (the next
run is due that long after the last report) or a cron expression in a time zone (the next run
is due at the first cron time after the last report).  Before the first report, the time the
check was first configured stands in for it, so a job that never runs is missed too.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from stackwatch.config import Duration, Model, Secret, TargetConfig, secret_from
from stackwatch.durations import human_duration
from stackwatch.state import Conn
from stackwatch.probes.base import Family, KindState, ProbeContext, ProbeKind, ProbeResult, Reason

MIN_TOKEN = 16


class Schedule(Model):
    """When the job is expected: ``every`` (a period) or ``cron`` (with ``timezone``)."""

    every: Duration | None = Field(None, gt=0)
    cron: str | None = Field(None, max_length=200)
    timezone: str = Field("UTC", max_length=64)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from cronsim import CronSim, CronSimError

        try:
            CronSim(v, datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
        except (CronSimError, ValueError, KeyError) as exc:
            raise ValueError(f'"{v}" is not a cron expression (minute hour day month weekday, '
                             f'optionally seconds first): {exc}') from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f'unknown time zone "{v}"; use an IANA name like Europe/Berlin or UTC') from None
        return v

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set either every (e.g. 5m) or cron (e.g. \"0 3 * * *\"), not both and not neither")
        if self.cron is None and self.timezone != "UTC":
            raise ValueError("timezone applies to cron schedules only")
        return self

    def next_after(self, moment: float) -> float:
        """The first time the job is expected after ``moment`` (unix seconds)."""
        if self.every is not None:
            return moment + float(self.every)
        from cronsim import CronSim

        assert self.cron is not None
        zone = zoneinfo.ZoneInfo(self.timezone)
        start = datetime.datetime.fromtimestamp(moment, zone)
        try:
            return next(CronSim(self.cron, start)).timestamp()
        except StopIteration:  # an expression that never matches again (e.g. 30 February)
            return float("inf")

    def describe(self) -> str:
        if self.every is not None:
            return f"every {human_duration(float(self.every))}"
        return f'cron "{self.cron}" ({self.timezone})'


class HeartbeatTarget(TargetConfig):
    """A job that reports in to ``/push/NAME``; see the module docstring."""

    kind: Literal["heartbeat"]
    schedule: Schedule
    grace: Duration = Field(60.0, ge=0)
    """How long after the expected time a report may still come before the check fails."""
    max_run_time: Duration | None = Field(None, gt=0)
    """With start reports: a run that has not ended this long after its start fails the check."""
    token: Secret | None = None
    token_file: str | None = None

    @model_validator(mode="after")
    def _token(self) -> HeartbeatTarget:
        token = secret_from(self.token, self.token_file, "token")
        if token is None:
            raise ValueError("a heartbeat needs a token: token: ${ENV_VAR} or token_file: /path "
                             "(generate one with: openssl rand -hex 16)")
        if len(token.get_secret_value()) < MIN_TOKEN:
            raise ValueError(f"the token is shorter than {MIN_TOKEN} characters; generate one with: openssl rand -hex 16")
        if token.get_secret_value() != token.get_secret_value().strip() or "/" in token.get_secret_value():
            raise ValueError("the token must not contain spaces or / (it may travel in a URL path)")
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "token_file", None)
        return self

    def secret_token(self) -> bytes:
        assert self.token is not None
        return self.token.get_secret_value().encode()


# ------------------------------------------------------------------ state of one check


@dataclass(frozen=True, slots=True)
class Row:
    """A check's stored state (unix times; None when it never happened)."""

    name: str
    first_seen: float
    last_start: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_exit_code: int | None = None
    last_duration: float | None = None
    last_message: str | None = None
    starts: int = 0
    runs: int = 0
    failures: int = 0

    @property
    def last_report(self) -> float | None:
        ends = [t for t in (self.last_success, self.last_failure) if t is not None]
        return max(ends) if ends else None

    @property
    def running(self) -> bool:
        report = self.last_report
        return self.last_start is not None and (report is None or self.last_start > report)


COLUMNS = ("name, first_seen, last_start, last_success, last_failure, last_exit_code, last_duration, "
           "last_message, starts, runs, failures")


def row_from(values: tuple[Any, ...]) -> Row:
    return Row(*values)


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason | None
    message: str
    next_expected: float
    late: bool
    overdue: bool


def evaluate(t: HeartbeatTarget, row: Row, now: float) -> Verdict:
    """Whether the job is on time at ``now``: a pure function of the schedule and the stored row."""
    report = row.last_report
    anchor = report if report is not None else row.first_seen
    expected = t.schedule.next_after(anchor)
    due = expected + float(t.grace)
    late = expected < now <= due
    overdue = now > due
    since = f"last report {human_duration(now - report)} ago" if report is not None else "no report yet"
    if row.running and t.max_run_time is not None and row.last_start is not None:
        running_for = now - row.last_start
        if running_for > float(t.max_run_time):
            return Verdict(Reason.RUNNING_TOO_LONG, f"the run started {human_duration(running_for)} ago has not ended "
                           f"(max_run_time {human_duration(float(t.max_run_time))})", expected, late, overdue)
        # a run in progress is not missed while it may still end in time
        return Verdict(None, "", expected, late, False)
    if report is not None and row.last_failure == report:
        code = f" with exit code {row.last_exit_code}" if row.last_exit_code not in (None, 0) else ""
        said = f": {row.last_message}" if row.last_message else ""
        return Verdict(Reason.FAILED, f"the last run reported a failure{code} "
                       f"{human_duration(now - report)} ago{said}"[:500], expected, late, overdue)
    if overdue:
        return Verdict(Reason.MISSED, f"{since}; expected by {_iso(expected)} ({t.schedule.describe()}) "
                       f"plus {human_duration(float(t.grace))} grace", expected, late, overdue)
    return Verdict(None, "", expected, late, overdue)


def _iso(moment: float) -> str:
    if moment == float("inf"):
        return "never"
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def due_words(t: HeartbeatTarget, row: Row, now: float) -> str:
    """When the job is due, for the status page: "next report due in 4 min (12:00 UTC)"."""
    expected = evaluate(t, row, now).next_expected
    if expected == float("inf"):
        return "no further run is scheduled"
    if expected >= now:
        return f"next report due in {human_duration(expected - now)} ({_iso(expected)})"
    return f"next report was due {human_duration(now - expected)} ago ({_iso(expected)}), grace {human_duration(float(t.grace))}"


def details(t: HeartbeatTarget, row: Row, now: float) -> list[tuple[str, str]]:
    """The check's state in words, for the target's page: (what, value) pairs."""
    def ago(moment: float | None) -> str:
        return "never" if moment is None else f"{_iso(moment)} ({human_duration(now - moment)} ago)"
    out = [("Schedule", f"{t.schedule.describe()}, grace {human_duration(float(t.grace))}"
            + (f", max run time {human_duration(float(t.max_run_time))}" if t.max_run_time is not None else "")),
           ("Due", due_words(t, row, now)),
           ("Last success", ago(row.last_success)), ("Last failure", ago(row.last_failure)),
           ("Last start", ago(row.last_start) + (" (running)" if row.running else "")),
           ("Runs", f"{row.runs} ended, {row.failures} failed, {row.starts} started")]
    if row.last_duration is not None:
        out.append(("Last run took", human_duration(row.last_duration)))
    if row.last_exit_code is not None:
        out.append(("Last exit code", str(row.last_exit_code)))
    if row.last_message:
        out.append(("Last message", row.last_message))
    return out


# ------------------------------------------------------------------ store operations (stackwatch.state)


def ensure_op(names: list[str], now: float) -> Callable[[Conn], None]:
    """Rows for newly configured checks (first_seen = now); existing rows are kept."""
    def op(c: Conn) -> None:
        for name in names:
            c.execute("INSERT INTO heartbeats (name, first_seen) VALUES (:n, :t) ON CONFLICT (name) DO NOTHING",
                      {"n": name, "t": now})
    return op


def read_op() -> Callable[[Conn], list[Row]]:
    def op(c: Conn) -> list[Row]:
        return [row_from(r) for r in c.execute(f"SELECT {COLUMNS} FROM heartbeats")]
    return op


def event_op(name: str, event: str, at: float, exit_code: int | None, duration: float | None,
             message: str | None) -> Callable[[Conn], Row]:
    """Record one report; returns the check's row after it.  One UPDATE ... RETURNING (the row
    is created first if missing): atomic on both backends, so replicas sharing a store never
    lose a report, and one round trip to PostgreSQL per report."""
    if event == "start":
        sql = f"UPDATE heartbeats SET last_start = :t, starts = starts + 1 WHERE name = :n RETURNING {COLUMNS}"
        params: dict[str, Any] = {"n": name, "t": at}
    else:
        # the run's duration: as reported, else from its start report (if it started after the last end)
        took = ("COALESCE(:d, CASE WHEN last_start IS NOT NULL AND last_start > COALESCE(last_success, -1) "
                "AND last_start > COALESCE(last_failure, -1) AND :t >= last_start THEN :t - last_start END)")
        sql = (f"UPDATE heartbeats SET {'last_failure' if event == 'fail' else 'last_success'} = :t, "
               f"runs = runs + 1, failures = failures + :f, last_exit_code = :x, last_duration = {took}, "
               f"last_message = :m WHERE name = :n RETURNING {COLUMNS}")
        params = {"n": name, "t": at, "f": 1 if event == "fail" else 0, "x": exit_code, "d": duration, "m": message}

    def op(c: Conn) -> Row:
        rows = c.execute(sql, params)
        if not rows:  # the check's first report, before its row was created
            c.execute("INSERT INTO heartbeats (name, first_seen) VALUES (:n, :t) ON CONFLICT (name) DO NOTHING",
                      {"n": name, "t": at})
            rows = c.execute(sql, params)
        return row_from(rows[0])
    return op


# ------------------------------------------------------------------ metrics

LAST_SUCCESS = Family("stackwatch_heartbeat_last_success_timestamp_seconds", "gauge",
                      "When the job last reported success (unix time).")
LAST_FAILURE = Family("stackwatch_heartbeat_last_failure_timestamp_seconds", "gauge",
                      "When the job last reported a failure (unix time).")
LAST_START = Family("stackwatch_heartbeat_last_start_timestamp_seconds", "gauge",
                    "When the job last reported a start (unix time).")
NEXT = Family("stackwatch_heartbeat_next_expected_timestamp_seconds", "gauge",
              "When the job's next report is expected (unix time), before the grace.")
LATE = Family("stackwatch_heartbeat_late", "gauge", "1 past the expected time but within the grace.",
              healthy=0, failing="the job is late (past its expected time, within the grace)")
OVERDUE = Family("stackwatch_heartbeat_overdue", "gauge", "1 once the expected time and the grace have passed.",
                 healthy=0, failing="the job did not report in time")
RUNNING = Family("stackwatch_heartbeat_running", "gauge", "1 while a started run has not reported its end.")
RUNS = Family("stackwatch_heartbeat_runs_total", "counter", "Runs that reported their end (success or failure).")
FAILURES = Family("stackwatch_heartbeat_failures_total", "counter", "Runs that reported a failure.")
STARTS = Family("stackwatch_heartbeat_starts_total", "counter", "Runs that reported their start.")
DURATION = Family("stackwatch_heartbeat_last_run_duration_seconds", "gauge",
                  "How long the last ended run took (reported, or from its start report).")
EXIT_CODE = Family("stackwatch_heartbeat_last_exit_code", "gauge", "The exit code the last ended run reported.")


# ------------------------------------------------------------------ the kind


class HeartbeatState(KindState):
    """The checks' stored rows, read from the state store at most every REFRESH seconds (one
    query for all checks), and updated at once by pushes to this process."""

    REFRESH = 1.0

    def __init__(self) -> None:
        self.store: Any = None
        self.rows: dict[str, Row] = {}
        self.names: list[str] = []
        self.read_at = 0.0
        self._reading: asyncio.Future[None] | None = None
        self.clock = time.time

    def use_store(self, store: Any) -> None:
        self.store = store

    def reload(self, targets: list[Any]) -> None:
        self.names = [t.name for t in targets]
        if self.store is not None and self.names:
            self.store.submit(ensure_op(self.names, self.clock()))
        self.read_at = 0.0

    def remember(self, row: Row) -> None:
        self.rows[row.name] = row

    async def row(self, name: str) -> Row | None:
        if time.monotonic() - self.read_at > self.REFRESH:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        return self.rows.get(name)

    async def _read(self) -> None:
        if self.store is None:
            return
        rows = await self.store.run(read_op())
        self.rows = {r.name: r for r in rows}
        self.read_at = time.monotonic()


async def probe_heartbeat(t: HeartbeatTarget, ctx: ProbeContext) -> ProbeResult:
    state: HeartbeatState = ctx.state
    row = await state.row(t.name)
    now = state.clock()
    if row is None:  # not yet written by the store's thread: configured this instant
        row = Row(t.name, now)
    verdict = evaluate(t, row, now)
    for family, value in ((LAST_SUCCESS, row.last_success), (LAST_FAILURE, row.last_failure),
                          (LAST_START, row.last_start), (DURATION, row.last_duration),
                          (EXIT_CODE, row.last_exit_code)):
        if value is not None:
            ctx.sample(family, value)
    if verdict.next_expected != float("inf"):
        ctx.sample(NEXT, verdict.next_expected)
    ctx.sample(LATE, 1 if verdict.late else 0)
    ctx.sample(OVERDUE, 1 if verdict.overdue else 0)
    ctx.sample(RUNNING, 1 if row.running else 0)
    ctx.sample(RUNS, row.runs)
    ctx.sample(FAILURES, row.failures)
    ctx.sample(STARTS, row.starts)
    if verdict.reason is not None:
        return ctx.failure(verdict.reason, verdict.message)
    ctx.log(f"on time: next report expected by {_iso(verdict.next_expected)}")
    return ctx.success()


KIND = ProbeKind(name="heartbeat", config_model=HeartbeatTarget, probe=probe_heartbeat, state=HeartbeatState)
