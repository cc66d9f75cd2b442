"""Durable state: what must survive a restart (heartbeats, consistency last-change times).

One small interface, two backends:

* an embedded SQLite file (``--storage.path``, the default ``data/stackwatch.db``): WAL journal,
  ``synchronous=FULL`` (a commit is on disk before it is acknowledged), created on first start;
* a SQLAlchemy URL (``--storage.url postgresql+psycopg://...``), so that several replicas, or
  the processes of ``--workers``, share it.  A password belongs in ``PGPASSWORD`` or
  ``~/.pgpass``, not in the URL (a URL's password is masked in every message all the same).

Every statement runs on one thread per store, never on the event loop.  Callers queue
operations; the thread runs what is queued in one transaction and commits once (group commit:
a thousand pushes a second cost a few commits, not a thousand), then resolves each caller's
future with its result, so ``await store.run(op)`` returns only once the change is durable.

The schema is versioned (table ``stackwatch_schema``) and migrated forward at open; a store
written by a newer stackwatch, a file that is not a database, or a path that cannot be written
is a :class:`StoreError` that names the path and the fix, raised before anything listens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackwatch.redact import redact_url

log = logging.getLogger("stackwatch.state")

DEFAULT_PATH = "data/stackwatch.db"
BATCH = 1000
"""Operations per transaction at most (one commit each)."""

# Each entry moves the schema one version forward.  Types that mean the same to SQLite and
# PostgreSQL (DOUBLE PRECISION is SQLite's REAL; BIGINT its INTEGER).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE heartbeats (
            name TEXT PRIMARY KEY,
            first_seen DOUBLE PRECISION NOT NULL,
            last_start DOUBLE PRECISION,
            last_success DOUBLE PRECISION,
            last_failure DOUBLE PRECISION,
            last_exit_code BIGINT,
            last_duration DOUBLE PRECISION,
            last_message TEXT,
            starts BIGINT NOT NULL DEFAULT 0,
            runs BIGINT NOT NULL DEFAULT 0,
            failures BIGINT NOT NULL DEFAULT 0)""",
        """CREATE TABLE kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (namespace, key))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The state store cannot be used; the message names the store and the fix."""


class Conn:
    """One backend connection, with the few operations the store needs (``:name`` parameters)."""

    dialect = ""

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteConn(Conn):
    dialect = "sqlite"

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=10000")

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, params or {}).fetchall()

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # take the write lock now: other processes wait, not fail

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()


class SQLAlchemyConn(Conn):
    def __init__(self, url: str):
        import sqlalchemy  # imported here: a SQLite store needs none of it

        self._text = sqlalchemy.text
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.dialect = self.engine.dialect.name
        self.conn = self.engine.connect()
        self.conn.commit()

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        result = self.conn.execute(self._text(sql), params or {})
        return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

    def begin(self) -> None:
        if self.conn.in_transaction():
            self.conn.commit()

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


Op = Callable[[Conn], Any]


@dataclass
class _Item:
    op: Op
    future: Future[Any]


class StateStore:
    """A durable store run by one thread; see the module's docstring."""

    def __init__(self, conn: Conn, where: str, dialect: str):
        self.where = where
        """The path or the masked URL, for messages."""
        self.dialect = dialect
        self._conn = conn
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="stackwatch-state", daemon=True)
        self._closed = False
        self.commits = 0
        self.failures = 0
        self._thread.start()

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | None = None, url: str | None = None) -> StateStore:
        """Open (and create or migrate) the store: a SQLAlchemy ``url`` if given, else the SQLite
        file at ``path`` (its directory is created).  Raises StoreError saying what to do."""
        if url:
            where = redact_url(url)
            dialect = url.split(":", 1)[0].split("+", 1)[0]
            if dialect not in ("postgresql", "sqlite"):
                raise StoreError(f"--storage.url {where}: only postgresql:// (or sqlite://) URLs are supported")
            try:
                conn: Conn = SQLAlchemyConn(url)
            except Exception as exc:  # noqa: BLE001 -- any driver error becomes one located message
                raise StoreError(f"state store {where}: cannot connect: {_short(exc, url)}; check the URL, "
                                 "that the database exists and that this user may create tables in it") from None
        else:
            path = path or DEFAULT_PATH
            where = path
            if path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"state store {path}: cannot create the directory {Path(path).parent}: "
                                     f"{exc.strerror}; create it writable for this user, or choose another "
                                     "place with --storage.path") from None
                if Path(path).is_dir():
                    raise StoreError(f"state store {path}: is a directory; give a file name, e.g. {path}/stackwatch.db")
            try:
                conn = SQLiteConn(path)
            except sqlite3.OperationalError as exc:
                raise StoreError(f"state store {path}: cannot open: {exc}; check that the file and its directory "
                                 "are writable by this user, or choose another place with --storage.path") from None
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"state store {path}: not a stackwatch state store ({exc}); move the file away (or "
                                 "restore it from a backup) and start again: a new store is created") from None
            dialect = "sqlite"
        store = cls(conn, where, dialect)
        try:
            store.call(store._migrate, timeout=60.0)
        except StoreError:
            store.close()
            raise
        except Exception as exc:  # noqa: BLE001
            store.close()
            hint = ("move the file away (or restore it from a backup) and start again: a new store is created"
                    if dialect == "sqlite" else "check the database and this user's rights in it")
            raise StoreError(f"state store {where}: unusable: {_short(exc, url)}; {hint}") from None
        return store

    @classmethod
    def check(cls, path: str | None = None, url: str | None = None) -> str:
        """For check-config: whether the store at ``path`` (or ``url``) can be used, without
        creating or changing anything.  Returns a line to print; raises StoreError."""
        if url:
            store = cls.open(url=url)  # a shared database: the tables are created once anyway
            store.close()
            return f"state store {redact_url(url)}: OK, schema version {SCHEMA_VERSION}"
        path = path or DEFAULT_PATH
        if not Path(path).exists():
            parent = Path(path).parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if not os.access(parent, os.W_OK):
                raise StoreError(f"state store {path}: does not exist and {parent} is not writable by this user; "
                                 "create the directory, or choose another place with --storage.path")
            return f"state store {path}: does not exist yet; it will be created at start"
        try:
            db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=5.0)
            try:
                rows = db.execute("SELECT version FROM stackwatch_schema").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"state store {path}: not a stackwatch state store ({exc}); move it away (or restore "
                             "it from a backup): a new store is created at start") from None
        version = int(rows[0][0]) if rows else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"state store {path}: schema version {version} was written by a newer stackwatch "
                             f"(this one knows {SCHEMA_VERSION})")
        if not os.access(path, os.W_OK):
            raise StoreError(f"state store {path}: not writable by this user")
        later = " (migrated at start)" if version < SCHEMA_VERSION else ""
        return f"state store {path}: OK, schema version {version}{later}"

    @classmethod
    def memory(cls) -> StateStore:
        """A store that lasts as long as the process (tests, and exporters built in code)."""
        return cls.open(":memory:")

    def _migrate(self, conn: Conn) -> int:
        if self.dialect == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(7243010)")  # replicas starting together
        conn.execute("CREATE TABLE IF NOT EXISTS stackwatch_schema (version BIGINT NOT NULL)")
        rows = conn.execute("SELECT version FROM stackwatch_schema")
        version = int(rows[0][0]) if rows else 0
        if not rows:
            conn.execute("INSERT INTO stackwatch_schema (version) VALUES (0)")
        if version > SCHEMA_VERSION:
            raise StoreError(f"state store {self.where}: schema version {version} was written by a newer stackwatch "
                             f"(this one knows {SCHEMA_VERSION}); run the newer release, or start with a new store")
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
            conn.execute("UPDATE stackwatch_schema SET version = :v", {"v": number + 1})
            log.info("state store migrated", extra={"store": self.where, "version": number + 1})
        return version

    # ---------------------------------------------------------------- running

    def submit(self, op: Op) -> Future[Any]:
        """Queue ``op(conn)``; the future resolves once its transaction has committed."""
        fut: Future[Any] = Future()
        if self._closed:
            fut.set_exception(StoreError(f"state store {self.where} is closed"))
            return fut
        self._queue.put(_Item(op, fut))
        return fut

    async def run(self, op: Op) -> Any:
        """``op(conn)`` in the store's thread; returns its result once committed (durable)."""
        return await asyncio.wrap_future(self.submit(op))

    def call(self, op: Op, timeout: float = 30.0) -> Any:
        """Blocking form of :meth:`run`, for start-up and tools (not for the event loop)."""
        return self.submit(op).result(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._run_batch(batch)
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 -- closing at shutdown
            log.debug("closing the state store failed", exc_info=True)

    def _run_batch(self, batch: list[_Item]) -> None:
        results: list[tuple[_Item, Any, BaseException | None]] = []
        try:
            self._conn.begin()
            for item in batch:
                if not item.future.set_running_or_notify_cancel():
                    continue
                try:
                    results.append((item, item.op(self._conn), None))
                except StoreError as exc:
                    results.append((item, None, exc))
                except Exception as exc:  # noqa: BLE001 -- one op's error is its caller's, not the batch's
                    if _is_connection_error(exc):
                        raise
                    results.append((item, None, exc))
            self._conn.commit()
            self.commits += 1
        except Exception as exc:  # noqa: BLE001 -- the commit (or the connection) failed: nothing is durable
            self.failures += 1
            try:
                self._conn.rollback()
            except Exception:  # noqa: BLE001
                log.debug("rollback failed", exc_info=True)
            error = StoreError(f"state store {self.where}: write failed: {_short(exc, None)}")
            log.error("state store write failed", extra={"store": self.where, "error": str(error),
                                                        "operations": len(batch)})
            for item in batch:
                if item.future.running():
                    item.future.set_exception(error)
            self._reconnect()
            return
        for item, value, error in results:
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(value)

    def _reconnect(self) -> None:
        if isinstance(self._conn, SQLAlchemyConn):
            try:
                self._conn.conn.close()
                self._conn.conn = self._conn.engine.connect()
            except Exception:  # noqa: BLE001 -- retried on the next batch
                log.debug("state store reconnect failed", exc_info=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(10.0)

    # ---------------------------------------------------------------- key/value

    def values(self, namespace: str) -> dict[str, Any]:
        """Everything stored under ``namespace`` (blocking; for start-up)."""
        rows = self.call(lambda c: c.execute("SELECT key, value FROM kv WHERE namespace = :ns", {"ns": namespace}))
        out: dict[str, Any] = {}
        for key, value in rows:
            try:
                out[key] = json.loads(value)
            except ValueError:
                log.warning("state store: unreadable value skipped", extra={"namespace": namespace, "key": key})
        return out

    def keyed_values(self, namespace: str, width: int) -> dict[tuple[str, ...], Any]:
        """:meth:`values` for keys written as tuples (see :meth:`put_values`), of ``width`` parts."""
        out = {}
        for key, value in self.values(namespace).items():
            parts = tuple(key.split(KEY_SEP))
            if len(parts) == width:
                out[parts] = value
        return out

    def put_values(self, namespace: str, items: dict[str, Any] | dict[tuple[str, ...], Any]) -> Future[Any]:
        """Queue the entries (a key may be a tuple of strings: (target, source, field)); the
        future resolves once they are committed."""
        now = time.time()
        params = [{"ns": namespace, "k": _key(k), "v": json.dumps(v, separators=(",", ":")), "t": now}
                  for k, v in items.items()]

        def op(c: Conn) -> None:
            for p in params:
                c.execute("INSERT INTO kv (namespace, key, value, updated) VALUES (:ns, :k, :v, :t) "
                          "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                          p)
        return self.submit(op)

    def delete_values(self, namespace: str, keys: Sequence[str] | Sequence[tuple[str, ...]]) -> Future[Any]:
        keys = [_key(k) for k in keys]

        def op(c: Conn) -> None:
            for k in keys:
                c.execute("DELETE FROM kv WHERE namespace = :ns AND key = :k", {"ns": namespace, "k": k})
        return self.submit(op)


KEY_SEP = "\x1f"
"""Joins a tuple key's parts (a control character no target, source or field name may hold)."""


def _key(key: str | tuple[str, ...]) -> str:
    return key if isinstance(key, str) else KEY_SEP.join(key)


def _short(exc: BaseException, url: str | None) -> str:
    text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if url:
        text = text.replace(url, redact_url(url))
    return redact_url(text)[:300]


def _is_connection_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in ("OperationalError", "InterfaceError") and "sqlite3" not in type(exc).__module__
