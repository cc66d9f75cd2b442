"""kind: sql -- a database: reachability, custom queries, schema, migrations, connection saturation.

Typical failures it turns into metrics: a backend whose database URL was never configured, a
column a deploy forgot to migrate, an Alembic version table behind its expected head, a
server close to its connection limit.  THRESHOLDS.md rows D1-D4.

Engines and deadlines: :mod:`stackwatch.probes.sqldb`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from stackwatch.config import Duration, LabelName, Model, TargetConfig
from stackwatch.durations import format_duration
from stackwatch.probes import sqldb
from stackwatch.probes.base import (
    DynamicFamily,
    Family,
    KindState,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeResult,
    Reason,
    check_metric_name,
    declare_families,
    run_blocking,
    sanitize_label_value,
)
from stackwatch.probes.blocking import BlockingRunner

if TYPE_CHECKING:  # SQLAlchemy is imported when a SQL target is loaded, not with stackwatch
    from sqlalchemy import Connection


class SQLQuery(Model):
    """A query whose rows become series (sql_exporter style)."""

    name: str
    """Metric name; exported as stackwatch_<namespace>_<name> (one value column), or with a
    ``value_label`` when several value columns share the metric."""
    help: str = ""
    type: Literal["gauge", "counter"] = "gauge"
    sql: str
    labels: list[LabelName] = Field(default_factory=list)
    """Columns whose values become labels (one series per row)."""
    values: list[str] = Field(min_length=1)
    """Columns holding numbers."""
    value_label: LabelName | None = None
    """With several value columns: the label naming the column of each value."""
    timeout: Duration | None = None
    """Deadline of this query (default: what is left of the probe's timeout)."""
    min_interval: Duration | None = None
    """Run at most this often; between runs the last result is exported (HELP says so)."""

    @model_validator(mode="after")
    def _check(self) -> SQLQuery:
        check_metric_name(self.name, self.type)
        if len(self.values) > 1 and self.value_label is None:
            raise ValueError("several value columns need a value_label to tell them apart")
        overlap = set(self.labels) & set(self.values)
        if overlap:
            raise ValueError(f"column {sorted(overlap)[0]} cannot be both a label and a value")
        return self


class ColumnExpectation(Model):
    name: str
    type: str | None = None
    """Expected type, matched case-insensitively against the start of the reflected type
    (``varchar`` matches VARCHAR(32))."""


class TableExpectation(Model):
    name: str
    columns: list[ColumnExpectation | str] = Field(default_factory=list)
    indexes: list[str] = Field(default_factory=list)


class SchemaExpectations(Model):
    schema_name: str | None = Field(None, alias="schema")
    tables: list[TableExpectation] = Field(default_factory=list)


class MigrationExpectation(Model):
    expected_head: str = "any"
    """The Alembic revision the database must be at, or "any" for "exactly one head"."""
    version_table: str = "alembic_version"


class SQLTarget(sqldb.SQLConnection, TargetConfig):
    """A database reached through SQLAlchemy (url, password, password_file: sqldb.SQLConnection;
    an unusable URL is reported by the probe as not_configured)."""

    kind: Literal["sql"]
    namespace: str = "db"
    queries: list[SQLQuery] = Field(default_factory=list)
    schema_expectations: SchemaExpectations | None = Field(None, alias="schema")
    migrations: MigrationExpectation | None = None
    saturation: bool = True
    """Export server connections in use, the usable maximum and their ratio (the connection-saturation alert reads the ratio)."""

    _fams: dict[str, DynamicFamily] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _prepare(self) -> SQLTarget:
        self._fams = declare_families(self.namespace, [
            (q.name, q.type, (q.help or f"{q.name} from SQL query {q.name}.")
             + (f" Cached: the query runs at most every {format_duration(q.min_interval)}." if q.min_interval else ""))
            for q in self.queries])
        return self

    def extra_secrets(self) -> list[str]:
        return self.url_secrets()

    def declared_families(self) -> list[Family]:
        return list(self._fams.values())

    def family(self, q: SQLQuery) -> DynamicFamily:
        return self._fams[f"stackwatch_{self.namespace}_{q.name}"]


CONFIGURED = Family("stackwatch_sql_configured", "gauge",
                    "1 if the target has a usable database URL, 0 if it is empty or unparseable (not configured).")
UP = Family("stackwatch_sql_up", "gauge", "1 if a connection and SELECT 1 succeeded within the deadline.")
CONNECT = Family("stackwatch_sql_connect_duration_seconds", "gauge", "Time to get a connection (incl. pre-ping).")
PING = Family("stackwatch_sql_ping_duration_seconds", "gauge", "Time of SELECT 1.")
INFO = Family("stackwatch_sql_server_info", "gauge", "Database server dialect, driver and version (value 1).")
TABLE = Family("stackwatch_sql_schema_table_present", "gauge", "1 if an expected table exists.", healthy=1, failing="table {table} is missing")
COLUMN = Family("stackwatch_sql_schema_column_present", "gauge",
                "1 if an expected column exists (with the expected type, when one is configured).")
INDEX = Family("stackwatch_sql_schema_index_present", "gauge", "1 if an expected index exists.")
SCHEMA_OK = Family("stackwatch_sql_schema_ok", "gauge", "1 if every configured schema expectation holds.", healthy=1, failing="a schema expectation does not hold")
VERSION_TABLE = Family("stackwatch_sql_migration_version_table_present", "gauge",
                       "1 if the Alembic version table exists (0: the database was never migrated).")
REVISION = Family("stackwatch_sql_migration_revision_info", "gauge", "Alembic revision(s) the database is at (value 1).")
HEADS = Family("stackwatch_sql_migration_heads", "gauge", "Rows in the Alembic version table (more than 1: branched heads).")
AT_HEAD = Family("stackwatch_sql_migration_at_expected_head", "gauge",
                 "1 if the database is at the expected Alembic head (or at exactly one head when none is configured).", healthy=1, failing="the database is not at the expected migration")
CONNS = Family("stackwatch_sql_server_connections", "gauge", "Client connections open on the database server.")
MAX_CONNS = Family("stackwatch_sql_server_max_connections", "gauge",
                   "Connections ordinary users may open (PostgreSQL: max_connections minus reserved slots).")
CONN_RATIO = Family("stackwatch_sql_server_connections_utilization_ratio", "gauge",
                    "Server connections in use divided by the usable maximum (the saturation alert fires at 0.8).")
QUERY_OK = Family("stackwatch_sql_query_success", "gauge", "1 if the custom query ran and its rows could be read.", healthy=1, failing="query {query} failed")
QUERY_TIME = Family("stackwatch_sql_query_duration_seconds", "gauge", "Duration of the custom query's last run.")
QUERY_CACHED = Family("stackwatch_sql_query_cached", "gauge",
                      "1 if the custom query's series come from an earlier run (min_interval), 0 if it ran now.")

class SQLState(KindState):
    """The kind's engines, thread pool and custom-query cache."""

    def __init__(self) -> None:
        self.engines = sqldb.Engines()
        self.runner = BlockingRunner("sql")
        self.query_cache: dict[tuple[str, str], tuple[float, list[tuple[Family, dict[str, str], float]], float]] = {}
        self.query_cache_lock = threading.Lock()

    def reload(self, targets: list[Any]) -> None:
        self.engines.keep_only({t.name for t in targets})
        names = {(t.name, q.name) for t in targets for q in t.queries}
        with self.query_cache_lock:
            for key in [k for k in self.query_cache if k not in names]:
                del self.query_cache[key]

    async def close(self) -> None:
        self.engines.close()


def _check_schema(conn: Connection, t: SQLTarget, out: list, problems: list[str]) -> None:
    from sqlalchemy import inspect
    exp = t.schema_expectations
    assert exp is not None
    insp = inspect(conn)  # a fresh Inspector per probe: it caches reflection results
    schema = exp.schema_name
    all_ok = True
    for table in exp.tables:
        present = insp.has_table(table.name, schema=schema)
        out.append((TABLE, {"table": table.name}, 1 if present else 0))
        columns = {c["name"].lower(): c for c in insp.get_columns(table.name, schema=schema)} if present else {}
        indexes = {i["name"].lower() for i in insp.get_indexes(table.name, schema=schema) if i.get("name")} \
            if present else set()
        if present and table.indexes:
            # A unique constraint is an index on MySQL; PostgreSQL reports it separately.
            indexes |= {u["name"].lower() for u in insp.get_unique_constraints(table.name, schema=schema) if u.get("name")}
        if not present:
            all_ok = False
            problems.append(f"table {table.name} is missing")
        for col in table.columns:
            spec = ColumnExpectation(name=col) if isinstance(col, str) else col
            found = columns.get(spec.name.lower())
            ok = found is not None
            if ok and spec.type:
                actual = str(found["type"]).lower()
                ok = actual.startswith(spec.type.lower())
                if not ok:
                    problems.append(f"column {table.name}.{spec.name} is {actual}, expected {spec.type}")
            elif present and not ok:
                problems.append(f"column {table.name}.{spec.name} is missing")
            out.append((COLUMN, {"table": table.name, "column": spec.name}, 1 if ok else 0))
            all_ok &= ok
        for index in table.indexes:
            ok = index.lower() in indexes
            if present and not ok:
                problems.append(f"index {index} on {table.name} is missing")
            out.append((INDEX, {"table": table.name, "index": index}, 1 if ok else 0))
            all_ok &= ok
    out.append((SCHEMA_OK, {}, 1 if all_ok else 0))


def _check_migrations(conn: Connection, t: SQLTarget, out: list, problems: list[str]) -> None:
    from sqlalchemy import inspect, text
    m = t.migrations
    assert m is not None
    schema = t.schema_expectations.schema_name if t.schema_expectations else None
    if not inspect(conn).has_table(m.version_table, schema=schema):
        out += [(VERSION_TABLE, {}, 0), (HEADS, {}, 0), (AT_HEAD, {}, 0)]
        problems.append(f"never migrated: no {m.version_table} table")
        return
    qualified = f"{schema}.{m.version_table}" if schema else m.version_table
    heads = sorted(str(r[0]) for r in conn.execute(text(f"SELECT version_num FROM {qualified}")))
    out.append((VERSION_TABLE, {}, 1))
    out.append((HEADS, {}, len(heads)))
    for rev in heads[:20]:
        out.append((REVISION, {"revision": sanitize_label_value(rev)}, 1))
    if m.expected_head == "any":
        ok = len(heads) == 1
        if not ok:
            problems.append(f"expected one Alembic head, found {len(heads)}: {', '.join(heads) or 'none'}")
    else:
        ok = heads == [m.expected_head]
        if not ok:
            problems.append(f"at Alembic revision {', '.join(heads) or 'none'}, expected {m.expected_head}")
    out.append((AT_HEAD, {}, 1 if ok else 0))


def _saturation(conn: Connection, dialect: str, out: list) -> None:
    from sqlalchemy import text
    if dialect == "postgresql":
        # pg_stat_database.numbackends counts every client backend whatever the probe role may
        # see; pg_stat_activity hides other roles' rows from roles without pg_monitor.
        used = conn.execute(text("SELECT coalesce(sum(numbackends), 0) FROM pg_stat_database")).scalar_one()
        row = conn.execute(text(
            "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, "
            "coalesce(current_setting('reserved_connections', true)::int, 0)")).one()
        usable = row[0] - row[1] - row[2]
    elif dialect == "mysql":
        used = int(conn.execute(text("SHOW GLOBAL STATUS LIKE 'Threads_connected'")).one()[1])
        usable = int(conn.execute(text("SELECT @@max_connections")).scalar_one())
    else:
        return
    out.append((CONNS, {}, float(used)))
    out.append((MAX_CONNS, {}, float(usable)))
    if usable > 0:
        out.append((CONN_RATIO, {}, float(used) / usable))


def _run_query(conn: Connection, t: SQLTarget, q: SQLQuery, out: list, problems: list[str],
               dialect: str, is_mariadb: bool, deadline: float, state: SQLState) -> None:
    key = (t.name, q.name)
    now = time.monotonic()
    if q.min_interval:
        with state.query_cache_lock:
            cached = state.query_cache.get(key)
        if cached is not None and now - cached[0] < q.min_interval:
            out.extend(cached[1])
            out += [(QUERY_OK, {"query": q.name}, 1), (QUERY_TIME, {"query": q.name}, cached[2]),
                    (QUERY_CACHED, {"query": q.name}, 1)]
            return
    budget = max(0.05, min(deadline - now, q.timeout or float("inf")))
    fam = t.family(q)
    started = time.perf_counter()
    rows_out: list[tuple[Family, dict[str, str], float]] = []
    try:
        with _own_timeout(conn, dialect, is_mariadb, budget if q.timeout else None, t.deadline):
            columns, rows = sqldb.fetch_all(conn, sqldb.within(q.sql, budget, is_mariadb))
            missing = [c for c in (*q.labels, *q.values) if c not in columns]
            if missing:
                raise ValueError(f"the result has no column {missing[0]} (columns: {', '.join(columns)})")
            at = {c: i for i, c in enumerate(columns)}
            for row in rows:
                labels = {lab: sanitize_label_value("" if row[at[lab]] is None else str(row[at[lab]])) for lab in q.labels}
                for col in q.values:
                    value = row[at[col]]
                    if value is None:
                        continue
                    try:
                        number = float(value)
                    except (TypeError, ValueError):
                        raise ValueError(f"column {col} holds {type(value).__name__} {str(value)[:30]!r}, "
                                         "not a number") from None
                    extra = {q.value_label: col} if q.value_label else {}
                    rows_out.append((fam, {**labels, **extra}, number))
    except ValueError as exc:
        problems.append(f"query {q.name}: {exc}")
        out += [(QUERY_OK, {"query": q.name}, 0), (QUERY_TIME, {"query": q.name}, time.perf_counter() - started),
                (QUERY_CACHED, {"query": q.name}, 0)]
        return
    except Exception as exc:
        reason, message = sqldb.classify(exc, timed_out=time.monotonic() >= now + budget - 0.01)
        problems.append(f"query {q.name}: {reason.value}: {message}")
        out += [(QUERY_OK, {"query": q.name}, 0), (QUERY_TIME, {"query": q.name}, time.perf_counter() - started),
                (QUERY_CACHED, {"query": q.name}, 0)]
        if reason == Reason.STATEMENT_TIMEOUT:
            raise ProbeFailure(reason, f"query {q.name} ran past its {budget:.2f}s budget and was cancelled") from None
        return
    took = time.perf_counter() - started
    if q.min_interval:
        with state.query_cache_lock:
            state.query_cache[key] = (now, rows_out, took)
    out.extend(rows_out)
    out += [(QUERY_OK, {"query": q.name}, 1), (QUERY_TIME, {"query": q.name}, took), (QUERY_CACHED, {"query": q.name}, 0)]


@contextmanager
def _own_timeout(conn: Connection, dialect: str, is_mariadb: bool, seconds: float | None,
                 session: float) -> Iterator[None]:
    """A query with a timeout of its own runs under it (the session setting, put back to the
    target's timeout after); other queries run under the session's, set at connect."""
    if seconds is None or dialect not in ("postgresql", "mysql") or is_mariadb:  # MariaDB: sqldb.within
        yield
        return
    sqldb.set_statement_timeout(conn, dialect, seconds, is_mariadb)
    try:
        yield
    finally:
        sqldb.set_statement_timeout(conn, dialect, session, is_mariadb)


def _probe_sync(t: SQLTarget, state: SQLState, deadline: float, log: list[str],
                out: list[tuple[Family, dict[str, str], float]]) -> tuple[Reason | None, str]:
    """Runs in the SQL thread pool: appends samples to ``out``, returns (failure reason or None, message)."""
    parsed = t.parsed
    h = state.engines.handle_for(t.name, (t.url, t.password, t.timeout), parsed, t.deadline)
    with sqldb.exclusive(h, deadline, "probe of this database") as holder:
        # Autocommit, the statement timeout set when the connection was made: a probe sends
        # SELECT 1 and its own statements, nothing around them (sqldb._make_engine).
        try:
            conn, connect_time, ping = sqldb.connect_and_ping(h, deadline)
        except Exception as exc:
            out.append((UP, {}, 0))
            reason, message = sqldb.classify(exc, timed_out=time.monotonic() >= deadline - 0.06)
            log.append(f"connect failed: {reason.value}: {message}")
            return reason, message
        holder.append(conn)
        with conn:
            log.append(f"connected to {parsed.shown} in {connect_time * 1000:.1f}ms, SELECT 1 in {ping * 1000:.1f}ms")
            dialect = parsed.dialect
            is_mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
            out += [(UP, {}, 1), (CONNECT, {}, connect_time), (PING, {}, ping)]
            version = ".".join(str(p) for p in (conn.dialect.server_version_info or ())) or "unknown"
            name = "mariadb" if is_mariadb else dialect
            out.append((INFO, {"dialect": name, "driver": parsed.driver, "version": version}, 1))
            problems: list[str] = []
            reason: Reason | None = None
            try:
                if t.saturation:
                    _saturation(conn, dialect, out)
                if t.schema_expectations and t.schema_expectations.tables:
                    _check_schema(conn, t, out, problems)
                    if problems:
                        reason = Reason.SCHEMA
                if t.migrations:
                    before = len(problems)
                    _check_migrations(conn, t, out, problems)
                    if len(problems) > before and reason is None:
                        reason = Reason.MIGRATION
                before = len(problems)
                for q in t.queries:
                    _run_query(conn, t, q, out, problems, dialect, is_mariadb, deadline - 0.05, state)
                if len(problems) > before and reason is None:
                    reason = Reason.QUERY_ERROR
            except ProbeFailure:
                raise
            except Exception as exc:
                timed_out = time.monotonic() >= deadline - 0.06
                return sqldb.classify(exc, timed_out)
            for p in problems:
                log.append(p)
            return reason, "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")


async def probe_sql(t: SQLTarget, ctx: ProbeContext) -> ProbeResult:
    if t.not_configured is not None:
        ctx.sample(CONFIGURED, 0)
        ctx.sample(UP, 0)
        return ctx.failure(Reason.NOT_CONFIGURED, t.not_configured)
    ctx.sample(CONFIGURED, 1)
    state: SQLState = ctx.state
    return await run_blocking(ctx, state.runner, lambda deadline, log, out: _probe_sync(t, state, deadline, log, out))


KIND = ProbeKind(name="sql", config_model=SQLTarget, probe=probe_sql, max_concurrent=sqldb.POOL_WORKERS,
                 state=SQLState)
