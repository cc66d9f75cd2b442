"""kind: sql against the real PostgreSQL and MariaDB on this machine, and SQLite files.

Each test works in its own PostgreSQL schema or MariaDB database and drops it afterwards.
A database server that is not running is a test failure (tests/run.sh starts them).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from probing import run_probe
from stackwatch.series import render_result
from stackwatch.kinds import parse_config
from expo import find, value as metric

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIA = "mysql+pymysql://root@127.0.0.1:3306/test"
CANARY = "canary-Pw-7f3a9c"


@pytest.fixture(scope="module")
def pg_admin():
    engine = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        raise AssertionError(f"PostgreSQL is not running on 127.0.0.1:5432 (tests/run.sh starts it): {exc}") from None
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def maria_admin():
    engine = sa.create_engine(MARIA, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        raise AssertionError(f"MariaDB is not running on 127.0.0.1:3306 (tests/run.sh starts it): {exc}") from None
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema(pg_admin):
    name = f"sw_{secrets.token_hex(4)}"
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {name}")
    yield name
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def maria_db(maria_admin):
    name = f"sw_{secrets.token_hex(4)}"
    with maria_admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield name
    with maria_admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {name}")


def sql_target(body: str, env: dict[str, str] | None = None, timeout: str = "3s"):
    text = f"targets:\n  - name: db\n    kind: sql\n    interval: 30s\n    timeout: {timeout}\n{body}"
    return parse_config(text, env=env or {}).targets[0]


def lines(t, r) -> str:
    return "".join(render_result(t, r).values())


def value(t, r, name: str) -> float:
    """The target's one sample of ``name`` (a trailing "{" is ignored), parsed from its lines."""
    found = metric(lines(t, r), name.rstrip("{"), target=t.name)
    assert found is not None, f"no sample {name}:\n{lines(t, r)}"
    return found


# ------------------------------------------------------------------ reachability


async def test_postgres_up_with_server_info_and_saturation(pg_admin):
    t = sql_target(f"    url: {PG}\n")
    r = await run_probe(t)
    assert r.success, r.message
    text = lines(t, r)
    with pg_admin.connect() as c:
        max_conn = int(c.exec_driver_sql("SHOW max_connections").scalar())
        reserved = int(c.exec_driver_sql("SHOW superuser_reserved_connections").scalar())
        version = c.dialect.server_version_info
    assert metric(text, "stackwatch_sql_up", target="db", kind="sql") == 1
    assert metric(text, "stackwatch_sql_server_info", target="db", kind="sql", dialect="postgresql", driver="psycopg",
                  version=".".join(map(str, version))) == 1
    assert value(t, r, "stackwatch_sql_server_max_connections{") == max_conn - reserved
    used = value(t, r, "stackwatch_sql_server_connections{")
    assert 1 <= used < max_conn
    assert value(t, r, "stackwatch_sql_server_connections_utilization_ratio{") == pytest.approx(used / (max_conn - reserved))
    assert 0 < value(t, r, "stackwatch_sql_connect_duration_seconds{") < 3


async def test_saturation_counts_connections_held_by_others(pg_admin):
    t = sql_target(f"    url: {PG}\n")
    before = value(t, await run_probe(t), "stackwatch_sql_server_connections{")
    extra = sa.create_engine(PG, poolclass=sa.pool.NullPool)
    held = [extra.connect() for _ in range(5)]
    try:
        after = value(t, await run_probe(t), "stackwatch_sql_server_connections{")
    finally:
        for c in held:
            c.close()
    assert after - before == 5


async def test_mariadb_up_with_saturation(maria_admin):
    t = sql_target(f"    url: {MARIA}\n")
    r = await run_probe(t)
    assert r.success, r.message
    with maria_admin.connect() as c:
        max_conn = int(c.exec_driver_sql("SELECT @@max_connections").scalar())
    assert value(t, r, "stackwatch_sql_server_max_connections{") == max_conn
    assert metric(lines(t, r), "stackwatch_sql_server_info", dialect="mariadb", driver="pymysql") == 1


async def test_down_server_is_refused():
    r = await run_probe(sql_target("    url: postgresql+psycopg://postgres@127.0.0.1:1/test\n"))
    assert (r.success, r.reason.value) == (False, "connection_refused")


async def test_unknown_database(pg_admin, maria_admin):
    r = await run_probe(sql_target("    url: postgresql+psycopg://postgres@127.0.0.1:5432/sw_no_such_db\n"))
    assert (r.success, r.reason.value) == (False, "unknown_database")
    r = await run_probe(sql_target("    url: mysql+pymysql://root@127.0.0.1:3306/sw_no_such_db\n"))
    assert (r.success, r.reason.value) == (False, "unknown_database")


async def test_wrong_password_and_canary_redaction(maria_admin, tmp_path):
    user = f"sw_{secrets.token_hex(3)}"
    with maria_admin.connect() as c:
        c.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'right-password-123'")  # %% for pymysql
    try:
        pw_file = tmp_path / "pw"
        pw_file.write_text(CANARY + "\n")
        t = sql_target(f"    url: mysql+pymysql://{user}@127.0.0.1:3306/test\n    password_file: {pw_file}\n")
        r = await run_probe(t)
        assert (r.success, r.reason.value) == (False, "auth")
        everything = r.message + "\n".join(r.log) + lines(t, r) + repr(t)
        assert CANARY not in everything
        # The same canary given through the URL from an environment variable.
        t2 = sql_target("    url: ${DB_URL}\n",
                        env={"DB_URL": f"mysql+pymysql://{user}:{CANARY}@127.0.0.1:3306/test?password={CANARY}"})
        r2 = await run_probe(t2)
        assert r2.reason.value == "auth"
        assert CANARY not in r2.message + "\n".join(r2.log) + lines(t2, r2) + repr(t2)
        assert CANARY in t2.secrets()
    finally:
        with maria_admin.connect() as c:
            c.exec_driver_sql(f"DROP USER '{user}'@'%%'")


def test_inline_password_in_url_is_a_config_error():
    from stackwatch.config import ConfigError

    with pytest.raises(ConfigError) as info:
        sql_target(f"    url: postgresql+psycopg://u:{CANARY}@db/x\n")
    assert CANARY not in str(info.value)
    assert "a password in the URL is not accepted" in str(info.value)


@pytest.mark.parametrize("url,why", [
    ('""', "the database URL is empty"),
    ("${ESG_DATABASE_URL:-}", "the database URL is empty"),
    ("not a url", "the database URL cannot be parsed as a SQLAlchemy URL"),
])
async def test_not_configured_is_reported_not_skipped(url, why):
    t = sql_target(f"    url: {url}\n")
    r = await run_probe(t)
    assert (r.success, r.reason.value) == (False, "not_configured")
    assert why in r.message
    assert metric(lines(t, r), "stackwatch_sql_configured", target="db", kind="sql") == 0


async def test_silent_listener_ends_at_the_deadline():
    async def silent(reader, writer):
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for url in (f"mysql+pymysql://root@127.0.0.1:{port}/test", f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"):
            started = time.monotonic()
            r = await run_probe(sql_target(f"    url: {url}\n", timeout="1s"))
            took = time.monotonic() - started
            assert not r.success and r.reason.value in ("connect_timeout", "timeout"), (url, r.reason, r.message)
            assert took < 5, (url, took)  # the server stays silent 30 s: the 1 s deadline ended it
    finally:
        server.close()


# ------------------------------------------------------------------ SQLite


async def test_sqlite_missing_file_is_database_missing_and_not_created(tmp_path):
    path = tmp_path / "ai-go.db"
    r = await run_probe(sql_target(f"    url: sqlite:///{path}\n"))
    assert (r.success, r.reason.value) == (False, "database_missing")
    assert not path.exists()


async def test_sqlite_queries_and_schema(tmp_path):
    path = tmp_path / "ai-go.db"
    eng = sa.create_engine(f"sqlite:///{path}")
    with eng.begin() as c:
        c.exec_driver_sql("CREATE TABLE models (id INTEGER PRIMARY KEY, name TEXT, status TEXT)")
        c.exec_driver_sql("INSERT INTO models (name, status) VALUES ('a','active'),('b','active'),('c','outage')")
    eng.dispose()
    t = sql_target(f"""    url: sqlite:///{path}
    namespace: aigo
    schema: {{tables: [{{name: models, columns: [id, name, {{name: status, type: text}}]}}]}}
    queries:
      - {{name: models, sql: "SELECT status, count(*) AS n FROM models GROUP BY status", labels: [status], values: [n]}}
""")
    r = await run_probe(t)
    assert r.success, r.message
    text = lines(t, r)
    assert metric(text, "stackwatch_aigo_models", target="db", kind="sql", status="active") == 2
    assert metric(text, "stackwatch_sql_schema_ok", target="db", kind="sql") == 1
    assert [lab["dialect"] for lab, _ in find(text, "stackwatch_sql_server_info", target="db")] == ["sqlite"]


# ------------------------------------------------------------------ schema (seed 004)


async def test_missing_strategy_type_column_fails_with_schema(pg_admin, pg_schema, maria_admin, maria_db):
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"CREATE TABLE {pg_schema}.strategies (id serial PRIMARY KEY, name varchar(64))")
        c.exec_driver_sql(f"CREATE INDEX ix_strategies_name ON {pg_schema}.strategies (name)")
    with maria_admin.connect() as c:
        c.exec_driver_sql(f"CREATE TABLE {maria_db}.strategies (id int PRIMARY KEY, name varchar(64), "
                          "strategy_type varchar(32), INDEX ix_strategies_name (name))")
    expectations = """    schema:
      schema: {schema}
      tables:
        - name: strategies
          columns: [id, name, {{name: strategy_type, type: varchar}}]
          indexes: [ix_strategies_name]
        - name: trades
"""
    pg = sql_target(f"    url: {PG}\n" + expectations.format(schema=pg_schema))
    r = await run_probe(pg)
    assert (r.success, r.reason.value) == (False, "schema")
    assert r.message == "column strategies.strategy_type is missing; table trades is missing"
    text = lines(pg, r)
    assert metric(text, "stackwatch_sql_schema_column_present", target="db", kind="sql", table="strategies", column="strategy_type") == 0
    assert metric(text, "stackwatch_sql_schema_column_present", target="db", kind="sql", table="strategies", column="name") == 1
    assert metric(text, "stackwatch_sql_schema_index_present", target="db", kind="sql", table="strategies", index="ix_strategies_name") == 1
    assert metric(text, "stackwatch_sql_schema_table_present", target="db", kind="sql", table="trades") == 0
    assert metric(text, "stackwatch_sql_schema_ok", target="db", kind="sql") == 0
    maria = sql_target(f"    url: {MARIA}\n" + expectations.format(schema=maria_db).replace("        - name: trades\n", ""))
    r = await run_probe(maria)
    assert r.success, r.message
    assert metric(lines(maria, r), "stackwatch_sql_schema_column_present", column="strategy_type") == 1


async def test_column_type_mismatch(pg_admin, pg_schema):
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"CREATE TABLE {pg_schema}.strategies (id serial PRIMARY KEY, strategy_type integer)")
    t = sql_target(f"""    url: {PG}
    schema: {{schema: {pg_schema}, tables: [{{name: strategies, columns: [{{name: strategy_type, type: varchar}}]}}]}}
""")
    r = await run_probe(t)
    assert (r.reason.value, r.message) == ("schema", "column strategies.strategy_type is integer, expected varchar")


# ------------------------------------------------------------------ migrations (seed 001)


def make_alembic(tmp_path: Path, url: str, schema: str | None):
    from alembic import command
    from alembic.config import Config

    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(f'''
from alembic import context
from sqlalchemy import create_engine
engine = create_engine({url!r})
with engine.connect() as connection:
    context.configure(connection=connection, version_table_schema={schema!r})
    with context.begin_transaction():
        context.run_migrations()
''')
    (scripts / "script.py.mako").write_text("")
    for rev, down in (("doc25_001", None), ("doc25_002", "doc25_001")):
        (scripts / "versions" / f"{rev}.py").write_text(
            f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n"
            "def upgrade():\n    pass\ndef downgrade():\n    pass\n")
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    return cfg, command


async def test_alembic_never_migrated_behind_and_at_head(pg_admin, pg_schema, tmp_path):
    cfg, command = make_alembic(tmp_path, PG, pg_schema)
    t = sql_target(f"""    url: {PG}
    schema: {{schema: {pg_schema}}}
    migrations: {{expected_head: doc25_002}}
""")
    r = await run_probe(t)
    assert (r.reason.value, r.message) == ("migration", "never migrated: no alembic_version table")
    assert metric(lines(t, r), "stackwatch_sql_migration_version_table_present", target="db", kind="sql") == 0

    command.upgrade(cfg, "doc25_001")  # behind head
    r = await run_probe(t)
    assert (r.reason.value, r.message) == ("migration", "at Alembic revision doc25_001, expected doc25_002")
    assert metric(lines(t, r), "stackwatch_sql_migration_revision_info", target="db", kind="sql", revision="doc25_001") == 1
    assert metric(lines(t, r), "stackwatch_sql_migration_at_expected_head", target="db", kind="sql") == 0

    command.upgrade(cfg, "head")
    r = await run_probe(t)
    assert r.success, r.message
    assert metric(lines(t, r), "stackwatch_sql_migration_at_expected_head", target="db", kind="sql") == 1

    # Two rows in alembic_version: branched heads, fails "any single head" too.
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"INSERT INTO {pg_schema}.alembic_version VALUES ('other_branch')")
    t_any = sql_target(f"    url: {PG}\n    schema: {{schema: {pg_schema}}}\n    migrations: {{}}\n")
    r = await run_probe(t_any)
    assert (r.reason.value, r.message) == ("migration", "expected one Alembic head, found 2: doc25_002, other_branch")
    assert metric(lines(t_any, r), "stackwatch_sql_migration_heads", target="db", kind="sql") == 2


# ------------------------------------------------------------------ custom queries (seeds 000, 001)


async def test_custom_queries_with_labels_values_and_min_interval(pg_admin, pg_schema):
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"CREATE TABLE {pg_schema}.users (id serial, role text, eco_points int)")
        c.exec_driver_sql(f"INSERT INTO {pg_schema}.users (role, eco_points) VALUES "
                          "('admin', 1000), ('farmer', 2240), ('consumer', 1000)")
        c.exec_driver_sql(f"CREATE TABLE {pg_schema}.partner_energy_pools (partner_id text, current_energy float, "
                          "max_capacity float)")
        c.exec_driver_sql(f"INSERT INTO {pg_schema}.partner_energy_pools VALUES ('P-001', 8200, 10000), "
                          "('P-002', 1250, 10000)")
    t = sql_target(f"""    url: {PG}
    namespace: pamtalk
    queries:
      - name: users
        help: Users by role.
        sql: SELECT role, count(*) AS users FROM {pg_schema}.users GROUP BY role
        labels: [role]
        values: [users]
      - name: eco_points
        sql: SELECT sum(eco_points) AS points FROM {pg_schema}.users
        values: [points]
        min_interval: 1h
      - name: energy_pool
        sql: SELECT partner_id, current_energy, max_capacity FROM {pg_schema}.partner_energy_pools
        labels: [partner_id]
        values: [current_energy, max_capacity]
        value_label: quantity
""")
    r = await run_probe(t)
    assert r.success, r.message
    text = lines(t, r)
    for line in ('stackwatch_pamtalk_users{target="db",kind="sql",role="farmer"} 1',
                 'stackwatch_pamtalk_eco_points{target="db",kind="sql"} 4240',
                 'stackwatch_pamtalk_energy_pool{target="db",kind="sql",partner_id="P-002",quantity="current_energy"} 1250',
                 'stackwatch_pamtalk_energy_pool{target="db",kind="sql",partner_id="P-002",quantity="max_capacity"} 10000',
                 'stackwatch_sql_query_success{target="db",kind="sql",query="users"} 1',
                 'stackwatch_sql_query_cached{target="db",kind="sql",query="eco_points"} 0'):
        assert line + "\n" in text, line
    assert "Cached: the query runs at most every 1h." in t.family(t.queries[1]).help
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"UPDATE {pg_schema}.users SET eco_points = 0")
    r = await run_probe(t)
    text = lines(t, r)
    assert metric(text, "stackwatch_pamtalk_eco_points", target="db", kind="sql") == 4240  # cached, min_interval 1h
    assert metric(text, "stackwatch_sql_query_cached", target="db", kind="sql", query="eco_points") == 1


async def test_broken_query_fails_with_query_error_and_others_still_export(pg_admin, pg_schema):
    t = sql_target(f"""    url: {PG}
    queries:
      - {{name: ok, sql: "SELECT 7 AS v", values: [v]}}
      - {{name: broken, sql: "SELECT * FROM {pg_schema}.no_such_table", values: [v]}}
      - {{name: text_value, sql: "SELECT 'abc' AS v", values: [v]}}
""")
    r = await run_probe(t)
    assert (r.success, r.reason.value) == (False, "query_error")
    assert r.message.startswith("query broken: query_error: relation")
    assert "query text_value: column v holds str 'abc', not a number" in r.message
    text = lines(t, r)
    assert metric(text, "stackwatch_db_ok", target="db", kind="sql") == 7
    assert metric(text, "stackwatch_sql_query_success", target="db", kind="sql", query="broken") == 0


# ------------------------------------------------------------------ deadlines that hold


async def test_pg_sleep_is_cancelled_on_the_server_at_the_deadline(pg_admin):
    marker = f"sw_sleep_{secrets.token_hex(3)}"
    t = sql_target(f"    url: {PG}\n    queries: [{{name: slow, sql: 'SELECT pg_sleep(60) AS v /* {marker} */', values: [v]}}]\n",
                   timeout="1s")
    started = time.monotonic()
    r = await run_probe(t)
    took = time.monotonic() - started
    assert (r.success, r.reason.value) == (False, "statement_timeout"), r.message
    assert 0.8 < took < 5  # the deadline held: the sleep is 60 s (the margin is for a loaded machine)
    await asyncio.sleep(0.3)
    with pg_admin.connect() as c:
        running = c.exec_driver_sql(
            f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%{marker}%%' AND state = 'active' "
            "AND pid <> pg_backend_pid()").scalar()
    assert running == 0


async def test_mariadb_sleep_is_cancelled_on_the_server_at_the_deadline(maria_admin):
    marker = f"sw_sleep_{secrets.token_hex(3)}"
    t = sql_target(f"    url: {MARIA}\n    queries: [{{name: slow, sql: 'SELECT SLEEP(60) AS v /* {marker} */', values: [v]}}]\n",
                   timeout="1s")
    started = time.monotonic()
    r = await run_probe(t)
    took = time.monotonic() - started
    assert not r.success and r.reason.value in ("statement_timeout", "query_error"), r.message
    assert took < 5  # SLEEP(60): the 1 s deadline ended it
    await asyncio.sleep(0.3)
    with maria_admin.connect() as c:
        running = c.exec_driver_sql(
            f"SELECT count(*) FROM information_schema.processlist WHERE info LIKE '%%{marker}%%' "
            "AND id <> connection_id()").scalar()
    assert running == 0


async def test_table_lock_ends_at_the_deadline(pg_admin, pg_schema):
    with pg_admin.connect() as c:
        c.exec_driver_sql(f"CREATE TABLE {pg_schema}.locked (v int)")
    locker = sa.create_engine(PG)
    conn = locker.connect()
    trans = conn.begin()
    conn.exec_driver_sql(f"LOCK TABLE {pg_schema}.locked IN ACCESS EXCLUSIVE MODE")
    try:
        t = sql_target(f"    url: {PG}\n    queries: [{{name: v, sql: 'SELECT count(*) AS v FROM {pg_schema}.locked', values: [v]}}]\n",
                       timeout="1s")
        started = time.monotonic()
        r = await run_probe(t)
        assert (r.success, r.reason.value) == (False, "statement_timeout"), r.message
        assert time.monotonic() - started < 5  # the lock is held until the end of the test
    finally:
        trans.rollback()
        conn.close()
        locker.dispose()


@pytest.mark.parametrize("url", [PG, MARIA], ids=["postgresql", "mariadb"])
async def test_a_probe_sends_its_ping_and_its_queries_and_nothing_else(url, monkeypatch):
    """Statements a steady-state probe sends, counted where they reach the driver (its cursor's
    execute, whoever calls it): SELECT 1 and the three queries.  No BEGIN/COMMIT around them,
    no session settings per probe (set once per connection), no pool pre-ping, no ROLLBACK when
    the connection goes back to the pool.  (MariaDB's own count, per target-run against the Go
    peer's, is in bench/RESULTS.md.)"""
    import psycopg
    import pymysql.cursors

    sent: list[str] = []
    for cls in (psycopg.Cursor, pymysql.cursors.Cursor):
        original = cls.execute

        def counted(self, query, *args, _original=original, **kwargs):  # noqa: ANN001
            sent.append(query if isinstance(query, str) else str(query))
            return _original(self, query, *args, **kwargs)

        monkeypatch.setattr(cls, "execute", counted)
    t = sql_target(f"    url: {url}\n    saturation: false\n    queries:\n"
                   "      - {name: a, sql: 'SELECT 1 AS v', values: [v]}\n"
                   "      - {name: b, sql: 'SELECT 2 AS v', values: [v]}\n"
                   "      - {name: c, sql: 'SELECT 3 AS v', values: [v]}\n")
    def questions() -> int:  # MariaDB's own count of the statements clients sent (ROLLBACK included)
        import pymysql

        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
        try:
            with admin.cursor() as c:
                c.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
                return int(c.fetchone()[1])
        finally:
            admin.close()

    first = await run_probe(t)  # connects: the session's statement timeout is set here
    assert first.success, first.message
    sent.clear()
    if url == MARIA:
        idle = -questions() + questions()  # what reading the count costs by itself
    before = questions() if url == MARIA else 0
    second = await run_probe(t)
    server_side = questions() - before - idle if url == MARIA else None
    assert second.success, second.message
    bare = [s.split(" FOR ", 1)[-1] for s in sent if not s.startswith("SHOW GLOBAL STATUS")]
    assert bare == ["SELECT 1", "SELECT 1 AS v", "SELECT 2 AS v", "SELECT 3 AS v"], sent
    if server_side is not None:  # the same four by MariaDB's count (a ROLLBACK would be a fifth)
        assert server_side == 4, server_side
