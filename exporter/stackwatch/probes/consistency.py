"""kind: consistency -- the same quantities read from several sources at one instant, compared.

The failure it is for: a dashboard shows "51 of 63 active, 127 total" because its database, a
cached API and a fallback file with a hard-coded number disagree, and nobody can tell which
one a page shows.

A target names a set of fields (total, active, ...) and several sources: an HTTP JSON API (the
options of kind: http, plus a JSON path per field), a SQL query (its columns are the fields;
the engines and deadlines of kind: sql) or a local JSON/YAML file (a shipped fallback).  All
sources are read concurrently in one probe; a failed source does not fail the others.  Each
source's values are checked against invariants (``active <= total``), each field's spread
across sources against a tolerance, and each value's last change is remembered so a source
frozen on a hard-coded fallback shows up (the consistency alerts in the bundle).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from stackwatch.config import Model, TargetConfig
from stackwatch.probes import rediskv, sqldb
from stackwatch.probes.invariants import InvariantT
from stackwatch.probes.base import (
    Family,
    KindState,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeResult,
    Reason,
    sanitize_label_value,
)
from stackwatch.probes.blocking import BlockingRunner
from stackwatch.probes.httpclient import HTTPClients, HTTPRequest, fetch
from stackwatch.probes.rediskv import RedisClients, RedisSource
from stackwatch.probes.jsonquery import (
    JSONPathExpr,
    JSONPathField,
    parse_json,
    to_number,
)

# ------------------------------------------------------------------ config


class HTTPSource(HTTPRequest):
    fields: dict[str, JSONPathField]
    """Field -> JSON path in the response."""
    served_path: JSONPathField | None = None
    """JSON path whose string value names the source the application currently serves."""


class SQLSource(sqldb.SQLConnection):
    """url, password, password_file as in kind: sql (an unusable URL fails this source with
    reason not_configured at probe time, not the load)."""

    query: str
    """Its columns are the fields (one row)."""


class FileSource(Model):
    path: str
    fields: dict[str, JSONPathField]
    format: Literal["auto", "json", "yaml"] = "auto"


class Source(Model):
    name: str
    priority: int = 0
    """Lower is preferred (the application's fallback order: DB 1, cache 2, fallback 3)."""
    served: bool = False
    """Declare this source as the one the application serves (when it cannot tell itself)."""
    http: HTTPSource | None = None
    sql: SQLSource | None = None
    file: FileSource | None = None
    redis: RedisSource | None = None

    @model_validator(mode="after")
    def _one(self) -> Source:
        given = [k for k in ("http", "sql", "file", "redis") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f'source "{self.name}" needs exactly one of http, sql, file, redis '
                             f'(got {", ".join(given) or "none"})')
        return self

    @property
    def kind(self) -> str:
        return "http" if self.http else "sql" if self.sql else "redis" if self.redis else "file"


class Tolerance(Model):
    absolute: float | None = Field(None, ge=0)
    relative: float | None = Field(None, ge=0)
    """Fraction of the largest value: 0.05 = 5 %."""


class ConsistencyTarget(TargetConfig):
    kind: Literal["consistency"]
    fields: list[str] = Field(min_length=1)
    sources: list[Source] = Field(min_length=2)
    invariants: list[InvariantT] = Field(default_factory=list, max_length=256)
    """Rules each source's values must satisfy, e.g. ``active <= total``.  None by default."""
    tolerance: Tolerance = Field(default_factory=Tolerance)
    """Sources agree on a field when max - min is within absolute and/or relative (both if both set).
    Neither set: they must be equal."""
    field_tolerance: dict[str, Tolerance] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ConsistencyTarget:
        fields = set(self.fields)
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError("source names must be unique")
        for s in self.sources:
            declared = set(s.http.fields if s.http else s.file.fields if s.file else [])
            if declared - fields:
                raise ValueError(f'source "{s.name}" maps {sorted(declared - fields)[0]}, which is not in fields')
        for f in self.field_tolerance:
            if f not in fields:
                raise ValueError(f'field_tolerance names {f}, which is not in fields')
        for inv in self.invariants:
            if inv.names - fields:
                raise ValueError(f'invariant "{inv.text}" uses {sorted(inv.names - fields)[0]}, which is not a field')
        return self

    def warnings(self) -> list[str]:
        if self.invariants:
            return []
        return ["no invariants: impossible numbers (active > total, a negative count) are not checked, only "
                "disagreement between sources; add e.g. invariants: [\"active <= total\"] (since 0.2.0 there "
                "are no default invariants; see CHANGELOG.md)"]

    def extra_secrets(self) -> list[str]:
        return ([x for s in self.sources if s.sql for x in s.sql.url_secrets()]
                + [x for s in self.sources if s.redis for x in s.redis.secrets()])


VALUE = Family("stackwatch_consistency_value", "gauge", "A field's value as read from one source.")
SRC_OK = Family("stackwatch_consistency_source_success", "gauge", "1 if the source could be read in the last probe.", healthy=1, failing="source {source} could not be read")
SRC_REASON = Family("stackwatch_consistency_source_failure_reason", "gauge",
                    "Why a source could not be read: one series with value 1 per failing source.")
SRC_TIME = Family("stackwatch_consistency_source_duration_seconds", "gauge", "Time to read the source.")
SRC_PRIO = Family("stackwatch_consistency_source_priority", "gauge", "The source's priority (lower is preferred).")
SRC_SERVED = Family("stackwatch_consistency_source_served", "gauge",
                    "1 for the source the application currently serves.")
VIOLATED = Family("stackwatch_consistency_invariant_violated", "gauge",
                  "1 if the source's values break the invariant (an impossible count, such as active above total).", healthy=0, failing="source {source} breaks {invariant}")
SPREAD = Family("stackwatch_consistency_spread", "gauge", "Largest minus smallest value of a field across the sources read.")
SPREAD_RATIO = Family("stackwatch_consistency_spread_ratio", "gauge",
                      "Spread divided by the largest absolute value of the field (0.05 = 5 % apart).")
FIELD_AGREE = Family("stackwatch_consistency_field_agreement", "gauge",
                     "1 if the sources agree on the field within its tolerance.", healthy=1, failing="the sources disagree on {field}")
AGREE = Family("stackwatch_consistency_agreement", "gauge", "1 if the sources agree on every field.")
REDIS_TTL = Family("stackwatch_consistency_redis_key_ttl_seconds", "gauge",
                   "TTL of a Redis key a source reads (-1: never expires, -2: does not exist).")
REDIS_REFRESHED = Family("stackwatch_consistency_redis_key_refreshed_timestamp_seconds", "gauge",
                         "When the key was last refreshed: its value changed, its TTL went up or it appeared.")
REDIS_MAX_AGE = Family("stackwatch_consistency_redis_key_max_age_seconds", "gauge",
                       "Configured: how often the application should refresh the key.")
CHANGED = Family("stackwatch_consistency_value_last_change_timestamp_seconds", "gauge",
                 "When the source's value of the field last changed (first seen, if never), for stuck sources (M5).")



STORE_NAMESPACE = "consistency.last_change"


class ConsistencyState(KindState):
    """The kind's HTTP clients, SQL engines and thread pool, and each value's last change."""

    def __init__(self) -> None:
        self.http = HTTPClients()
        self.engines = sqldb.Engines()
        self.runner = BlockingRunner("consistency-sql")
        self.redis = RedisClients()
        self.refreshed: dict[tuple[str, str, str], tuple[float, str, float, float]] = {}
        """(target, source, key) -> (last TTL, last values read from it, when last refreshed, when read)"""
        self.history: dict[tuple[str, str, str], tuple[float, float]] = {}
        """(target, source, field) -> (last value, unix time it last changed), kept in the state
        store too: a restart must not make a source that is stuck look freshly changed."""
        self.store: Any = None

    def use_store(self, store: Any) -> None:
        self.store = store
        for key, value in store.keyed_values(STORE_NAMESPACE, 3).items():
            if isinstance(value, list) and len(value) == 2:
                self.history[key] = (float(value[0]), float(value[1]))  # type: ignore[index]

    def changed(self, key: tuple[str, str, str], value: float, at: float) -> None:
        self.history[key] = (value, at)
        if self.store is not None:
            self.store.put_values(STORE_NAMESPACE, {key: [value, at]})

    def reload(self, targets: list[Any]) -> None:
        alive = {(t.name, s.name, f) for t in targets for s in t.sources for f in t.fields}
        gone = [k for k in self.history if k not in alive]
        for key in gone:
            del self.history[key]
        if self.store is not None and gone:
            self.store.delete_values(STORE_NAMESPACE, gone)
        self.engines.keep_only({f"{t.name}/{s.name}" for t in targets for s in t.sources if s.sql})
        self.redis.keep_only({f"{t.name}/{s.name}" for t in targets for s in t.sources if s.redis})
        keys = {(t.name, s.name, k) for t in targets for s in t.sources if s.redis for k in s.redis.keys}
        for key in [k for k in self.refreshed if k not in keys]:
            del self.refreshed[key]

    async def close(self) -> None:
        self.engines.close()
        await self.http.close()
        await self.redis.close()

    def key_refreshed(self, key: tuple[str, str, str], ttl: float, seen: str, now: float) -> float:
        """When the Redis key was last refreshed (see rediskv), updated with this reading: its
        values changed, or its TTL is higher than the last one minus the time since (a new
        ``SET ... EX``; two seconds of slack for the two clocks and the read's own time)."""
        last = self.refreshed.get(key)
        if last is None or seen != last[1]:
            at = now
        elif ttl >= 0 and (last[0] < 0 or ttl > last[0] - (now - last[3]) + 2.0):
            at = now
        else:
            at = last[2]
        self.refreshed[key] = (ttl, seen, at, now)
        return at


# ------------------------------------------------------------------ reading sources


def _read_file(spec: FileSource) -> Any:
    try:
        text = Path(spec.path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProbeFailure(Reason.FILE_ERROR, f"cannot read {spec.path}: {exc.strerror}") from None
    fmt = spec.format if spec.format != "auto" else ("yaml" if spec.path.endswith((".yml", ".yaml")) else "json")
    try:
        return yaml.safe_load(text) if fmt == "yaml" else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ProbeFailure(Reason.INVALID_JSON, f"{spec.path} is not valid {fmt}: {str(exc).splitlines()[0]}") from None


def _extract(doc: Any, fields: dict[str, JSONPathExpr]) -> dict[str, float]:
    out: dict[str, float] = {}
    for field, path in fields.items():
        found = path.find(doc)
        if not found:
            raise ProbeFailure(Reason.EXTRACTION, f"{field}: nothing at {path.text}")
        try:
            out[field] = to_number(found[0])
        except ValueError as exc:
            raise ProbeFailure(Reason.EXTRACTION, f"{field} at {path.text}: {exc}") from None
    return out


async def _read(t: ConsistencyTarget, s: Source, ctx: ProbeContext,
                state: ConsistencyState) -> tuple[dict[str, float], str | None]:
    """(values, name of the served source if this source says so)."""
    if s.http is not None:
        resp = await fetch(s.http, ctx, state.http)
        if not s.http.status_ok(resp.status):
            raise ProbeFailure(Reason.HTTP_STATUS, f"HTTP status {resp.status}")
        try:
            doc = parse_json(resp.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProbeFailure(Reason.INVALID_JSON, f"body is not valid JSON: {exc}") from None
        served = None
        if s.http.served_path is not None:
            found = s.http.served_path.find(doc)
            served = str(found[0]) if found else None
        return _extract(doc, s.http.fields), served
    if s.sql is not None:
        spec = s.sql
        handle = state.engines.handle_for(f"{t.name}/{s.name}", (spec.url, spec.password, t.timeout), spec.parsed,
                                          t.deadline)
        row = await state.runner.run(lambda: sqldb.query_one_row(handle, spec.query, ctx.deadline), ctx.deadline)
        values: dict[str, float] = {}
        for field in t.fields:
            if field in row and row[field] is not None:
                try:
                    values[field] = to_number(row[field])
                except ValueError as exc:
                    raise ProbeFailure(Reason.EXTRACTION, f"column {field}: {exc}") from None
        return values, None
    if s.redis is not None:
        spec = s.redis
        client = state.redis.client(f"{t.name}/{s.name}", spec, t.deadline)
        values, ttls, lines = await rediskv.read(client, spec)
        for line in lines:
            ctx.log(line)
        now = time.time()
        for key, ttl in ttls.items():
            label = sanitize_label_value(key)
            seen = ",".join(f"{n}={v!r}" for n, v in values.items() if spec.fields[n].key == key)
            ctx.sample(REDIS_TTL, ttl, source=s.name, key=label)
            ctx.sample(REDIS_REFRESHED, state.key_refreshed((t.name, s.name, key), ttl, seen, now), source=s.name, key=label)
            if key in spec.max_age:
                ctx.sample(REDIS_MAX_AGE, spec.max_age[key], source=s.name, key=label)
        return values, None
    assert s.file is not None
    return _extract(_read_file(s.file), s.file.fields), None


def _agrees(spread: float, largest: float, tol: Tolerance) -> bool:
    ok = True
    if tol.absolute is not None:
        ok &= spread <= tol.absolute
    if tol.relative is not None:
        ok &= (spread / largest if largest else 0.0) <= tol.relative
    if tol.absolute is None and tol.relative is None:
        ok = spread == 0
    return ok


async def probe_consistency(t: ConsistencyTarget, ctx: ProbeContext) -> ProbeResult:
    state: ConsistencyState = ctx.state
    history = state.history

    async def one(s: Source) -> tuple[Source, dict[str, float] | None, str | None, ProbeFailure | None, float]:
        started = time.perf_counter()
        try:
            values, served = await _read(t, s, ctx, state)
            return s, values, served, None, time.perf_counter() - started
        except ProbeFailure as exc:
            return s, None, None, exc, time.perf_counter() - started
        except Exception as exc:  # one broken source must not take the others down
            return s, None, None, ProbeFailure(Reason.INTERNAL, f"{type(exc).__name__}: {exc}"), time.perf_counter() - started

    results = await asyncio.gather(*(one(s) for s in t.sources))
    now = time.time()
    read: dict[str, dict[str, float]] = {}
    served_names = {s.name for s in t.sources if s.served}
    for s, values, served, failure, took in results:
        ctx.sample(SRC_TIME, took, source=s.name)
        ctx.sample(SRC_PRIO, s.priority, source=s.name)
        if failure is not None:
            ctx.sample(SRC_OK, 0, source=s.name)
            ctx.sample(SRC_REASON, 1, source=s.name, reason=failure.reason.value)
            ctx.log(f"source {s.name} ({s.kind}) failed: {failure.reason.value}: {ctx.scrub(failure.message)}")
            continue
        assert values is not None
        ctx.sample(SRC_OK, 1, source=s.name)
        ctx.log(f"source {s.name} ({s.kind}): " + ", ".join(f"{k}={v:g}" for k, v in values.items()))
        if served:
            served_names.add(served)
        read[s.name] = values
        for field, v in values.items():
            ctx.sample(VALUE, v, source=s.name, field=field)
            key = (t.name, s.name, field)
            last = history.get(key)
            if last is None or last[0] != v:
                ctx.state.changed(key, v, now)
            ctx.sample(CHANGED, history[key][1], source=s.name, field=field)
    for s in t.sources:
        ctx.sample(SRC_SERVED, 1 if s.name in served_names else 0, source=s.name)

    violations = []
    for name, values in read.items():
        for inv in t.invariants:
            holds = inv.holds(values)
            if holds is None:
                continue
            ctx.sample(VIOLATED, 0 if holds else 1, source=name, invariant=inv.text)
            if not holds:
                shown = ", ".join(f"{n}={values[n]:g}" for n in sorted(inv.names))
                violations.append(f"{name}: {inv.text} ({shown})")

    disagreements = []
    all_agree = True
    for field in t.fields:
        vals = [(name, v[field]) for name, v in read.items() if field in v]
        if len(vals) < 2:
            continue
        lo, hi = min(v for _, v in vals), max(v for _, v in vals)
        spread = hi - lo
        largest = max(abs(lo), abs(hi))
        ctx.sample(SPREAD, spread, field=field)
        ctx.sample(SPREAD_RATIO, spread / largest if largest else 0.0, field=field)
        ok = _agrees(spread, largest, t.field_tolerance.get(field, t.tolerance))
        ctx.sample(FIELD_AGREE, 1 if ok else 0, field=field)
        if not ok:
            all_agree = False
            disagreements.append(f"{field}: " + ", ".join(f"{n}={v:g}" for n, v in vals))
    ctx.sample(AGREE, 1 if all_agree else 0)

    failed = [s.name for s, values, *_ in results if values is None]
    if violations:
        return ctx.failure(Reason.INVARIANT, "; ".join(violations[:4]) + (f" (and {len(violations) - 4} more)" if len(violations) > 4 else ""))
    if disagreements:
        return ctx.failure(Reason.DISAGREEMENT, "sources disagree on " + "; ".join(disagreements[:4]))
    if len(read) < 2:
        first = next(f for _, v, _, f, _ in results if v is None)
        return ctx.failure(first.reason, f"fewer than two sources could be read ({', '.join(failed)} failed: "
                                         f"{ctx.scrub(first.message)})")
    return ctx.success()


KIND = ProbeKind(name="consistency", config_model=ConsistencyTarget, probe=probe_consistency,
                 state=ConsistencyState)
