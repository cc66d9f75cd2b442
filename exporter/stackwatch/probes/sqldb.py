"""SQL plumbing shared by the probes that read databases (kind: sql, and consistency sources).

Synchronous SQLAlchemy engines, one per target, run in a bounded thread pool owned by the
kind's state, because only the PostgreSQL async drivers cancel a query for real (aiomysql
leaves it running, aiosqlite ignores cancellation).  The deadline is enforced in layers:

1. the driver's connect timeout (psycopg ``connect_timeout``; PyMySQL ``connect_timeout`` and
   ``read_timeout``, without which a silent server hangs the handshake forever);
2. a server-side statement timeout set per query (PostgreSQL ``statement_timeout``, MariaDB
   ``max_statement_time``, MySQL ``max_execution_time``);
3. a watchdog thread that interrupts the running call at the deadline (psycopg
   ``cancel_safe()``, sqlite ``interrupt()``; PyMySQL relies on ``read_timeout``);
4. the scheduler's own deadline, which never waits for the thread.

A target's engine is used by one probe at a time (single flight): a probe that finds the
previous one still running fails at once instead of queueing behind it.
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from typing import TYPE_CHECKING

from pydantic import PrivateAttr, field_validator, model_validator

from stackwatch.config import Model, Secret, secret_from
from stackwatch.probes.base import ProbeFailure, Reason, release_exception
from stackwatch.redact import MASK, EnvStr, is_secret_name

if TYPE_CHECKING:  # SQLAlchemy is imported when the first SQL target is loaded (~25 MB less RSS without one)
    from sqlalchemy.engine import URL, Connection, Engine

POOL_WORKERS = 16


@dataclass(frozen=True)
class ParsedURL:
    url: URL
    dialect: str  # postgresql | mysql | sqlite
    driver: str

    @functools.cached_property
    def shown(self) -> str:
        """The URL for logs (safe_url), made once: SQLAlchemy builds it with a self-referencing
        closure, a cycle per call that only the cyclic GC would free."""
        return safe_url(self.url)


def parse_url(raw: str, password: str | None) -> ParsedURL:
    """Parse a SQLAlchemy URL; raise ValueError without echoing any part that may be secret."""
    from sqlalchemy import exc, make_url
    if not raw or not raw.strip():
        raise ValueError("the database URL is empty")
    try:
        url = make_url(raw.strip())
    except (exc.ArgumentError, ValueError):
        raise ValueError("the database URL cannot be parsed as a SQLAlchemy URL "
                         "(dialect+driver://user@host:port/database)") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "mysql", "mariadb", "sqlite"):
        raise ValueError(f'unsupported database "{backend}"; expected postgresql, mysql, mariadb or sqlite')
    if backend != "sqlite" and not driver:
        raise ValueError(f"name the driver explicitly: {backend}+psycopg, mysql+pymysql (got {backend}://)")
    if password is not None:
        url = url.set(password=password)
    if backend == "sqlite":
        url = _sqlite_read_only(url)
    return ParsedURL(url, "mysql" if backend == "mariadb" else backend, driver or "pysqlite")


def _sqlite_read_only(url: URL) -> URL:
    """A missing SQLite file must be a failure, not a new empty database: open it read-only."""
    path = url.database or ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    return url.set(database=f"file:{quote(path)}?mode=ro", query={**url.query, "uri": "true"})


def url_secrets(raw: str, unparseable_is_secret: bool = True) -> list[str]:
    """Secret values inside a URL string (password and secret-looking query parameters).

    An unparseable URL is returned whole (so it is scrubbed from messages), unless
    ``unparseable_is_secret`` is False.
    """
    from sqlalchemy import make_url
    try:
        url = make_url(raw)
    except Exception:
        return [raw] if raw and unparseable_is_secret else []
    out = [url.password] if url.password else []
    for key, value in url.query.items():
        if is_secret_name(key):
            out.extend([value] if isinstance(value, str) else list(value))
    return [str(s) for s in out if s]


def no_inline_password(v: Any) -> Any:
    """Validator: a URL written in the file may not hold a password (one from ${ENV} may)."""
    if isinstance(v, str) and not isinstance(v, EnvStr) and url_secrets(v, unparseable_is_secret=False):
        raise ValueError("a password in the URL is not accepted; use password (from ${ENV_VAR}), "
                         "password_file, or a URL that comes whole from ${ENV_VAR}")
    return v


class SQLConnection(Model):
    """Where a database is and how to log in: the same fields and the same rules for kind: sql
    and for a consistency kind's SQL source.

    ``url`` is a SQLAlchemy URL with an explicit driver (postgresql+psycopg, mysql+pymysql,
    sqlite).  A password written inside the URL in the file fails the load (it belongs in
    ``password`` from ${ENV} or ``password_file``).  A URL that cannot be used (empty because
    the deployment never set it, no driver, an unknown dialect) does not fail the load: the
    probe reports it as reason not_configured, so a database that was never configured is a
    metric and an alert, not a config that refuses to start."""

    url: str
    password: Secret | None = None
    password_file: str | None = None

    _parsed: ParsedURL | None = PrivateAttr(default=None)
    _parse_error: str | None = PrivateAttr(default=None)

    @field_validator("url", mode="before")
    @classmethod
    def _no_inline_password(cls, v: Any) -> Any:
        return no_inline_password(v)

    @model_validator(mode="after")
    def _parse_connection(self) -> SQLConnection:
        pw = secret_from(self.password, self.password_file, "password")
        object.__setattr__(self, "password", pw)
        try:
            self._parsed = parse_url(self.url, pw.get_secret_value() if pw else None)
        except ValueError as exc:
            self._parsed, self._parse_error = None, str(exc)
        return self

    @property
    def not_configured(self) -> str | None:
        """Why the URL cannot be used, as the probe reports it; None when it can."""
        return None if self._parsed is not None else f"the database is not configured: {self._parse_error}"

    @property
    def parsed(self) -> ParsedURL:
        """The parsed URL; ProbeFailure(not_configured) naming the problem when it cannot be used."""
        if self._parsed is None:
            raise ProbeFailure(Reason.NOT_CONFIGURED, self.not_configured or "")
        return self._parsed

    def url_secrets(self) -> list[str]:
        return url_secrets(self.url)


def safe_url(url: URL) -> str:
    """The URL for logs: password masked by SQLAlchemy, secret query parameters masked by us."""
    masked = url.set(query={k: (MASK if is_secret_name(k) else v) for k, v in url.query.items()})
    return masked.render_as_string(hide_password=True)


# ------------------------------------------------------------------ engines


class Handle:
    """One target's engine plus its single-flight lock."""

    def __init__(self, parsed: ParsedURL, timeout: float):
        self.parsed = parsed
        self.busy = threading.Lock()
        self.engine = _make_engine(parsed, timeout)

    def dispose(self) -> None:
        self.engine.dispose()


def _make_engine(parsed: ParsedURL, timeout: float) -> Engine:
    """An engine for one target: one pooled connection in autocommit mode, its server-side
    statement timeout set once when it connects.

    What a probe sends is what it needs: no BEGIN/COMMIT around read-only statements
    (autocommit), no session settings per probe (set at connect: for PostgreSQL in the startup
    packet, for MariaDB/MySQL one SET), no pool pre-ping on top of the probe's own SELECT 1 (a
    connection found dead by it is replaced and the ping retried once, see
    :func:`connect_and_ping`), no
    ROLLBACK when the connection goes back to the pool (there is no transaction to end)."""
    from sqlalchemy import create_engine, event
    ms = max(1, int(timeout * 1000))
    connect_args: dict[str, Any] = {}
    if parsed.dialect == "postgresql":
        # libpq: whole-handshake timeout in whole seconds, minimum 2 (its default is infinite).
        connect_args["connect_timeout"] = max(2, math.ceil(timeout))
        connect_args["application_name"] = "stackwatch"
        connect_args["options"] = f"-c statement_timeout={ms}"
    elif parsed.dialect == "mysql":
        # connect_timeout bounds only the TCP connect; read_timeout bounds the handshake and queries.
        seconds = max(1, math.ceil(timeout))
        connect_args.update(connect_timeout=seconds, read_timeout=seconds, write_timeout=seconds)
    elif parsed.dialect == "sqlite":
        connect_args["timeout"] = timeout  # busy-lock wait
        connect_args["check_same_thread"] = False
    engine = create_engine(parsed.url, isolation_level="AUTOCOMMIT", skip_autocommit_rollback=True,
                           pool_pre_ping=False, pool_reset_on_return=None, pool_size=1, max_overflow=1,
                           pool_timeout=timeout, pool_recycle=1800, connect_args=connect_args)
    if parsed.dialect == "mysql":
        @event.listens_for(engine, "connect")
        def _session_timeout(dbapi_connection: Any, _record: Any) -> None:
            info = getattr(dbapi_connection, "get_server_info", lambda: "")() or ""
            with dbapi_connection.cursor() as cur:
                if "mariadb" in str(info).lower():
                    cur.execute(f"SET SESSION max_statement_time = {ms / 1000:.3f}")
                else:
                    cur.execute(f"SET SESSION max_execution_time = {ms}")
    return engine


def connect_and_ping(handle: Handle, deadline: float) -> tuple[Connection, float, float]:
    """A connection from the target's pool and its SELECT 1: (connection, seconds to get it,
    seconds of the ping).  A pooled connection the server dropped meanwhile (a restart, an idle
    timeout) fails its ping as a disconnect: it is replaced and the ping retried once, as the
    pool's pre-ping would, but without a second statement on every probe."""
    from sqlalchemy import exc
    for attempt in (1, 2):
        started = time.perf_counter()
        conn = handle.engine.connect()
        connected = time.perf_counter() - started
        try:
            t0 = time.perf_counter()
            conn.exec_driver_sql("SELECT 1").scalar()
            return conn, connected, time.perf_counter() - t0
        except exc.DBAPIError as e:
            conn.close()
            if attempt == 2 or not e.connection_invalidated or time.monotonic() >= deadline - 0.1:
                raise
            release_exception(e)
    raise AssertionError("unreachable")


class Engines:
    """The engines of one kind's targets, by key; a changed target config gets a new engine."""

    def __init__(self) -> None:
        self._handles: dict[str, tuple[Any, Handle]] = {}
        self._lock = threading.Lock()

    def handle_for(self, key: str, identity: Any, parsed: ParsedURL, timeout: float) -> Handle:
        with self._lock:
            current = self._handles.get(key)
            if current is not None and current[0] == identity:
                return current[1]
            h = Handle(parsed, timeout)
            self._handles[key] = (identity, h)
        if current is not None:
            current[1].dispose()
        return h

    def keep_only(self, keys: set[str]) -> None:
        """Dispose engines whose key is not in ``keys`` (called on reload)."""
        with self._lock:
            gone = [k for k in self._handles if k not in keys]
            dropped = [self._handles.pop(k)[1] for k in gone]
        for h in dropped:
            h.dispose()

    def close(self) -> None:
        self.keep_only(set())


# ------------------------------------------------------------------ deadlines


class _Watchdog:
    """One thread for every probe's deadline: a heap of (deadline, token) and the callbacks by
    token; the callback of a deadline that passes runs in this thread unless cancelled first
    (cancelling drops it at once: nothing of a finished probe stays referenced).  A timer
    thread per probe cost a thread start and exit on every SQL probe."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._cond = threading.Condition()
        self._n = 0
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: float, fn: Callable[[], None]) -> int:
        with self._cond:
            self._n += 1
            heapq.heappush(self._heap, (deadline, self._n))
            self._callbacks[self._n] = fn
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="stackwatch-sql-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._n

    def cancel(self, token: int) -> None:
        with self._cond:
            self._callbacks.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] not in self._callbacks:
                        heapq.heappop(self._heap)  # cancelled
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        fn = self._callbacks.pop(heapq.heappop(self._heap)[1])
                        break
                    self._cond.wait(wait)
            try:
                fn()
            except Exception:  # noqa: BLE001 -- a failed cancel leaves the deadline to the runner
                pass
            fn = None  # type: ignore[assignment]


WATCHDOG = _Watchdog()


@contextmanager
def watchdog(conn_holder: list[Connection], deadline: float) -> Iterator[None]:
    """Interrupt the connection's running statement at ``deadline`` (time.monotonic())."""

    def fire() -> None:
        if not conn_holder:
            return
        try:
            dbapi = conn_holder[0].connection.dbapi_connection
        except Exception:
            return
        for method in ("cancel_safe", "cancel", "interrupt"):  # psycopg >= 3.2, older psycopg, sqlite3
            fn = getattr(dbapi, method, None)
            if fn is not None:
                try:
                    fn()
                except Exception:
                    pass
                return

    token = WATCHDOG.schedule(deadline, fire)
    try:
        yield
    finally:
        WATCHDOG.cancel(token)


@contextmanager
def exclusive(handle: Handle, deadline: float, what: str) -> Iterator[list[Connection]]:
    """Single flight on a target's engine plus the deadline watchdog.  Yields the list the
    caller puts its connection in, so the watchdog can interrupt it."""
    if not handle.busy.acquire(blocking=False):
        raise ProbeFailure(Reason.TIMEOUT, f"the previous {what} is still running")
    holder: list[Connection] = []
    try:
        with watchdog(holder, deadline - 0.05):
            yield holder
    finally:
        handle.busy.release()


def set_statement_timeout(conn: Connection, dialect: str, seconds: float, is_mariadb: bool) -> None:
    """Server-side cancellation of anything this session runs past ``seconds`` (a query with a
    timeout of its own; the session's default is set at connect)."""
    ms = max(1, int(seconds * 1000))
    if dialect == "postgresql":
        conn.exec_driver_sql(f"SET statement_timeout = {ms}")
    elif dialect == "mysql":
        if is_mariadb:
            conn.exec_driver_sql(f"SET SESSION max_statement_time = {ms / 1000:.3f}")
        else:
            conn.exec_driver_sql(f"SET SESSION max_execution_time = {ms}")


def fetch_all(conn: Connection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A custom query's columns and rows, run as written on the connection's DB-API cursor (no
    SQLAlchemy compilation or result wrapping: about half the CPU of a statement; measured in
    bench/RESULTS.md).  Driver errors propagate as the driver raised them (classify() reads
    both); a connection the server dropped is found and replaced by the next probe's ping."""
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchall() if cursor.description else []
    finally:
        cursor.close()
    return columns, list(rows)


def within(sql: str, seconds: float, is_mariadb: bool) -> str:
    """The statement with MariaDB's per-statement time limit in front of it (one round trip, the
    server stops it at the probe's remaining budget: pymysql cannot cancel a running statement).
    PostgreSQL statements are cancelled by the watchdog; other dialects run it as written."""
    if not is_mariadb:
        return sql
    return f"SET STATEMENT max_statement_time = {max(0.001, seconds):.3f} FOR {sql}"


# ------------------------------------------------------------------ errors


def classify(error: BaseException, timed_out: bool = False) -> tuple[Reason, str]:
    """A driver error as (reason, short message); the message never holds the URL or password.
    The error is done with afterwards: its traceback's cycles are broken (release_exception)."""
    try:
        return _classify(error, timed_out)
    finally:
        release_exception(error)


def _classify(error: BaseException, timed_out: bool = False) -> tuple[Reason, str]:
    from sqlalchemy import exc
    orig = getattr(error, "orig", None) or error
    msg = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    low = str(orig).lower()
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(error, exc.NoSuchModuleError) or isinstance(error, ModuleNotFoundError):
        return Reason.DRIVER_MISSING, f"database driver not installed: {msg}"
    if sqlstate == "57014" or code in (1969, 3024) or "statement timeout" in low or "max_statement_time" in low \
            or (timed_out and ("interrupted" in low or "canceling statement" in low or "cancel" in low)):
        return Reason.STATEMENT_TIMEOUT, f"statement cancelled at the deadline: {msg}"
    if "unable to open database file" in low:
        return Reason.DATABASE_MISSING, "the SQLite database file does not exist or cannot be opened read-only"
    if "password authentication failed" in low or "access denied" in low or code == 1045 \
            or re.search(r'role ".*" does not exist', low) or "no password supplied" in low:
        return Reason.AUTH, f"authentication failed: {msg}"
    if (re.search(r'database ".*" does not exist', low) or code == 1049) or "unknown database" in low:
        return Reason.UNKNOWN_DATABASE, f"unknown database: {msg}"
    if "too many connections" in low or code == 1040 or sqlstate == "53300":
        return Reason.TOO_MANY_CONNECTIONS, f"the server refuses new connections: {msg}"
    if ("server does not support ssl" in low or "ssl negotiation" in low or "ssl connection" in low
            or "ssl error" in low or "certificate verify failed" in low or "tls" in low.split(":")[0]
            or code in (2026,) or "ssl is required" in low):
        return Reason.TLS, f"TLS with the database failed: {msg}"
    if "connection refused" in low or code == 2003 and "refused" in low:
        return Reason.CONNECTION_REFUSED, "connection refused"
    if "failed to resolve host" in low or "name or service not known" in low or "name resolution" in low \
            or "nodename nor servname" in low or "getaddrinfo failed" in low:
        return Reason.DNS, f"cannot resolve the database host: {msg}"
    if "connection timeout expired" in low or "timed out" in low or code == 2013 \
            or isinstance(error, exc.TimeoutError):
        return Reason.CONNECT_TIMEOUT, f"no answer from the database in time: {msg}"
    if code == 2003:
        return Reason.CONNECTION_REFUSED, f"cannot connect: {msg}"
    return Reason.QUERY_ERROR, msg


def fail(error: BaseException, timed_out: bool = False) -> ProbeFailure:
    reason, message = classify(error, timed_out)
    return ProbeFailure(reason, message)


def query_one_row(handle: Handle, sql: str, deadline: float) -> dict[str, Any]:
    """Run ``sql`` on a target's engine within ``deadline`` (time.monotonic()); return its first
    row as a column -> value mapping.  Raises ProbeFailure with a classified reason.  One
    statement (autocommit; the session's statement timeout was set at connect); a pooled
    connection the server dropped is replaced and the query run again once."""
    from sqlalchemy import exc, text
    with exclusive(handle, deadline, "query on this database") as holder:
        for attempt in (1, 2):
            try:
                conn = handle.engine.connect()
            except Exception as e:
                raise fail(e) from None
            holder[:] = [conn]
            with conn:
                try:
                    is_mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
                    budget = deadline - 0.05 - time.monotonic()
                    row = conn.execute(text(within(sql, budget, is_mariadb))).mappings().first()
                except exc.DBAPIError as e:
                    if attempt == 1 and e.connection_invalidated and time.monotonic() < deadline - 0.1:
                        release_exception(e)
                        continue
                    raise fail(e, timed_out=time.monotonic() >= deadline - 0.06) from None
                except Exception as e:
                    raise fail(e, timed_out=time.monotonic() >= deadline - 0.06) from None
                if row is None:
                    raise ProbeFailure(Reason.QUERY_ERROR, "the query returned no row")
                return dict(row)
        raise AssertionError("unreachable")
