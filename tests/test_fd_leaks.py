"""Every exit path of a probe gives its connection back: fds counted before and after hundreds of
probes of hostile targets (timeouts, cancellation, failures, oversized bodies), per path.

The hostile peers run in a child process (tests/hostile.py), so the fds counted here are the
probes' own.  A leak of one socket per probe shows as hundreds; the bound allows a handful
(pooled clients, the loop's own)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from probing import close_clients, probers
from stackwatch.kinds import parse_config
from targets import make_tls_files

PROBES = 200
SLACK = 8


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    tls = make_tls_files(tmp_path_factory.mktemp("hostile-tls"))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hostile.py")), str(tls["cert"]), str(tls["key"])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("tests/hostile.py did not start")
        ports = json.loads(line)
        yield ports, tls
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def http_target(url: str, timeout: str = "300ms", **extra: str):
    lines = ["targets:", "  - name: t", "    kind: http", f"    url: {url}", f"    timeout: {timeout}"]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return parse_config("\n".join(lines) + "\n").targets[0]


async def probe_many(target, n: int = PROBES, batch: int = 50) -> list:
    results = []
    p = probers()
    for start in range(0, n, batch):
        results += await asyncio.gather(*(p.run(target, verbose=False) for _ in range(min(batch, n - start))))
    return results


async def settled_fds() -> int:
    """The fd count once closes scheduled by the loop have run."""
    for _ in range(3):
        await asyncio.sleep(0.05)
    gc.collect()
    return open_fds()


async def assert_no_growth(target, reason: str, **kw) -> None:
    await probe_many(target, n=10)  # clients, pools and TLS contexts created once, before counting
    before = await settled_fds()
    results = await probe_many(target, **kw)
    assert {r.reason.value if r.reason else None for r in results} == {reason}, {r.message for r in results}
    after = await settled_fds()
    assert after - before <= SLACK, f"{after - before} fds left open by {len(results)} probes failing with {reason}"


async def test_timeout_waiting_for_the_response(hostile):
    ports, _ = hostile
    await assert_no_growth(http_target(f"http://127.0.0.1:{ports['silent']}/"), "timeout")


async def test_timeout_reading_a_slow_body(hostile):
    ports, _ = hostile
    await assert_no_growth(http_target(f"http://127.0.0.1:{ports['trickle']}/"), "timeout")


async def test_timeout_in_the_tls_handshake(hostile):
    ports, tls = hostile
    await assert_no_growth(http_target(f"https://127.0.0.1:{ports['tls_mute']}/",
                                       tls_config=f"{{ca_file: {tls['ca']}}}"), "timeout")


async def test_timeout_after_the_tls_handshake(hostile):
    ports, tls = hostile
    await assert_no_growth(http_target(f"https://127.0.0.1:{ports['tls_silent']}/",
                                       tls_config=f"{{ca_file: {tls['ca']}}}"), "timeout")


async def test_body_over_the_limit(hostile):
    ports, _ = hostile
    await assert_no_growth(http_target(f"http://127.0.0.1:{ports['big']}/", timeout="2s", body_size_limit="64KiB"),
                           "body_too_large")


async def test_connection_closed_at_once(hostile):
    ports, _ = hostile
    await assert_no_growth(http_target(f"http://127.0.0.1:{ports['slam']}/"), "connection_error")


async def test_redirect_to_a_silent_hop(hostile):
    ports, _ = hostile
    await assert_no_growth(http_target(f"http://127.0.0.1:{ports['redirect']}/"), "timeout")


async def test_keep_alive_target_that_never_answers(hostile):
    ports, _ = hostile
    await assert_no_growth(http_target(f"http://127.0.0.1:{ports['silent']}/", keep_alive="true"), "timeout")


async def test_cancelled_probes(hostile):
    """A probe cancelled from outside (a reload removing its target, shutdown) closes its socket."""
    ports, _ = hostile
    t = http_target(f"http://127.0.0.1:{ports['silent']}/", timeout="10s")
    p = probers()
    await probe_many(http_target(f"http://127.0.0.1:{ports['slam']}/"), n=5)
    before = await settled_fds()
    tasks = [asyncio.create_task(p.run(t, verbose=False)) for _ in range(PROBES)]
    for _ in range(100):  # wait until they all hold a connection
        await asyncio.sleep(0.02)
        if open_fds() - before >= PROBES:
            break
    assert open_fds() - before >= PROBES * 0.9, "the probes never connected"
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    after = await settled_fds()
    assert after - before <= SLACK, f"{after - before} fds left open by {PROBES} cancelled probes"


async def test_fds_return_after_close_clients(hostile):
    """Closing the kinds' state (shutdown) releases the pooled keep-alive connections too."""
    ports, _ = hostile
    before = await settled_fds()
    await probe_many(http_target(f"http://127.0.0.1:{ports['big']}/", timeout="2s", keep_alive="true",
                                 body_size_limit="64KiB"), n=20)
    await close_clients()
    after = await settled_fds()
    assert after - before <= 2, f"{after - before} fds left open after the clients were closed"


# ------------------------------------------------------------------ SQL: a statement past the deadline

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIA = "mysql+pymysql://root@127.0.0.1:3306/test"


def sql_target(url: str, sql: str, marker: str):
    text = (f"targets:\n  - name: db-{marker}\n    kind: sql\n    interval: 30s\n    timeout: 400ms\n    url: {url}\n"
            f"    queries: [{{name: slow, sql: '{sql} AS v /* {marker} */', values: [v]}}]\n")
    return parse_config(text).targets[0]


def server_connections(url: str, query: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as c:
            return int(c.exec_driver_sql(query).scalar())
    except sa.exc.OperationalError as exc:
        raise AssertionError(f"{url.split('+')[0]} is not running (tests/run.sh starts it): {exc}") from None
    finally:
        engine.dispose()


@pytest.mark.parametrize("url,sql,count", [
    (PG, "SELECT pg_sleep(10)", "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                "AND pid <> pg_backend_pid()"),
    (MARIA, "SELECT SLEEP(10)", "SELECT count(*) FROM information_schema.processlist WHERE id <> connection_id()"),
], ids=["postgresql", "mariadb"])
async def test_sql_statements_past_the_deadline(url, sql, count):
    """Each probe's query is cut at the deadline; neither our fds nor the server's connections grow."""
    t = sql_target(url, sql, "fdleak")
    p = probers()
    await p.run(t, verbose=False)  # the engine and its pool exist before counting
    before, conns_before = await settled_fds(), server_connections(url, count)
    reasons = set()
    for _ in range(15):
        r = await p.run(t, verbose=False)
        reasons.add(r.reason.value if r.reason else None)
    assert reasons <= {"statement_timeout", "timeout", "query_error"} and None not in reasons, reasons
    after = await settled_fds()
    await asyncio.sleep(0.5)  # the server ends cancelled sessions asynchronously
    conns_after = server_connections(url, count)
    assert after - before <= SLACK, f"{after - before} fds left open by 15 timed-out queries"
    assert conns_after - conns_before <= 2, f"server connections {conns_before} -> {conns_after}"
