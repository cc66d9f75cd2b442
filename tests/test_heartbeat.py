"""Heartbeat checks and the state store: pushes that survive kill -9, none lost at a thousand a
second, missed/late/failed/running-too-long at the right time, one refusal for every bad push,
stuck-source timing across a restart, and replicas sharing PostgreSQL exporting each check once.
Real exporters (python -m stackwatch), a real PostgreSQL, a healthy HTTP target beside them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest
from harness import Stackwatch, http_get, wait_until
from stackwatch.config import ConfigError
from stackwatch.kinds import parse_config
from stackwatch.probes.base import Reason
from stackwatch.probes.heartbeat import HeartbeatTarget, Row, evaluate
from stackwatch.state import StateStore, StoreError
from test_auth import FAST, PASSWORD, basic
from test_exposure import runs
from expo import Samples, find, parse, value as metric

TOKEN = "0123456789abcdef0123456789abcdef"
ENV = {"HB_TOKEN": TOKEN}
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def sample(text: str | Samples, name: str, target: str) -> float | None:
    return metric(text, name, target=target, kind="heartbeat")


def reason(text: str | Samples, target: str) -> str | None:
    found = find(text, "stackwatch_probe_failure_reason", target=target, kind="heartbeat")
    return found[0][0]["reason"] if found else None


def push(base: str, path: str, token: str | None = TOKEN, body: bytes = b"", headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=body, method="POST", headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def write_config(tmp: Path, servers, checks: str) -> Path:
    cfg = tmp / "stackwatch.yml"
    cfg.write_text(f"""defaults: {{interval: 500ms, timeout: 400ms}}
targets:
  - {{name: healthy, kind: http, url: "{servers.url('/health')}"}}
{checks}""")
    return cfg


# ------------------------------------------------------------------ the schedule, with a fixed clock


def check(**kw) -> HeartbeatTarget:
    cfg = parse_config("targets:\n  - " + json.dumps({"name": "job", "kind": "heartbeat", "token": "${HB_TOKEN}", **kw}),
                       env=ENV)
    return cfg.targets[0]  # type: ignore[return-value]


def test_every_schedule_is_on_time_then_late_then_missed():
    t = check(schedule={"every": "5m"}, grace="1m")
    row = Row("job", first_seen=0.0, last_success=1000.0, runs=1)
    assert evaluate(t, row, 1000 + 300).reason is None and not evaluate(t, row, 1300).late
    late = evaluate(t, row, 1000 + 301)
    assert late.reason is None and late.late and not late.overdue
    assert evaluate(t, row, 1000 + 360).reason is None  # the last second of the grace
    missed = evaluate(t, row, 1000 + 361)
    assert missed.reason is Reason.MISSED and missed.overdue and missed.next_expected == 1300
    assert "expected by 1970-01-01T00:21:40Z (every 5 min) plus 1 min grace" in missed.message


def test_a_job_that_never_reports_is_missed_from_when_its_check_was_configured():
    t = check(schedule={"every": "1h"}, grace="10m")
    row = Row("job", first_seen=5000.0)
    assert evaluate(t, row, 5000 + 4200).reason is None
    verdict = evaluate(t, row, 5000 + 4201)
    assert verdict.reason is Reason.MISSED and "no report yet" in verdict.message


def test_cron_schedule_in_a_time_zone_across_daylight_saving():
    # 03:00 in Berlin, every day; the clocks went back on 2026-10-25 (03:00 CEST -> 02:00 CET).
    t = check(schedule={"cron": "0 3 * * *", "timezone": "Europe/Berlin"}, grace="30m")
    ran = 1792803600.0  # 2026-10-24T01:00:00Z = 03:00 CEST
    row = Row("job", first_seen=0.0, last_success=ran + 5)
    expected = 1792893600.0  # 2026-10-25T02:00:00Z = 03:00 CET (25 h later, not 24)
    assert evaluate(t, row, expected + 1800).reason is None
    assert evaluate(t, row, expected + 1801).reason is Reason.MISSED
    assert evaluate(t, row, expected + 1801).next_expected == expected


def test_failed_run_and_run_past_its_max_run_time():
    t = check(schedule={"every": "10m"}, grace="1m", max_run_time="2m")
    failed = Row("job", 0.0, last_success=100.0, last_failure=700.0, last_exit_code=3, last_message="disk full", runs=2,
                 failures=1)
    verdict = evaluate(t, failed, 710)
    assert verdict.reason is Reason.FAILED and "exit code 3" in verdict.message and "disk full" in verdict.message
    # a success after the failure clears it
    assert evaluate(t, Row("job", 0.0, last_success=800.0, last_failure=700.0), 810).reason is None
    running = Row("job", 0.0, last_start=1000.0, last_success=900.0)
    assert evaluate(t, running, 1120).reason is None  # running, within max_run_time
    assert evaluate(t, running, 1121).reason is Reason.RUNNING_TOO_LONG
    # a run in progress is not "missed" while it may still end in time
    slow = check(schedule={"every": "1m"}, grace="0s", max_run_time="10m")
    assert evaluate(slow, Row("job", 0.0, last_start=1000.0, last_success=990.0), 1300).reason is None


@pytest.mark.parametrize("entry, expected", [
    ({"schedule": {"every": "5m"}, "token": "inline-secret-value-1234"}, "inline secrets are not accepted"),
    ({"schedule": {"every": "5m"}, "token": None}, "a heartbeat needs a token"),
    ({"schedule": {"every": "5m", "cron": "* * * * *"}}, "set either every"),
    ({"schedule": {"cron": "61 * * * *"}}, "is not a cron expression"),
    ({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}}, 'unknown time zone "Mars/Olympus"'),
])
def test_bad_heartbeat_configs_are_located_errors(entry, expected):
    body = {"name": "job", "kind": "heartbeat", "token": "${HB_TOKEN}", **entry}
    if body["token"] is None:
        del body["token"]
    with pytest.raises(ConfigError) as err:
        parse_config("targets:\n  - " + json.dumps(body), env={"HB_TOKEN": TOKEN})
    text = err.value.render()
    assert expected in text and "targets[0]" in text and "line 2" in text
    assert "inline-secret-value-1234" not in text


def test_short_token_refused():
    with pytest.raises(ConfigError, match="shorter than 16"):
        parse_config('targets:\n  - {name: j, kind: heartbeat, schedule: {every: 1m}, token: "${T}"}', env={"T": "short"})


# ------------------------------------------------------------------ the store


def test_corrupt_unwritable_and_newer_stores_are_clear_errors(tmp_path):
    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(StoreError) as err:
        StateStore.open(str(bad))
    assert str(bad) in str(err.value) and "move the file away" in str(err.value)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(StoreError, match="writable|cannot open"):
                StateStore.open(str(locked / "state.db"))
    finally:
        locked.chmod(0o700)
    newer = tmp_path / "newer.db"
    StateStore.open(str(newer)).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE stackwatch_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 was written by a newer stackwatch"):
        StateStore.open(str(newer))
    # the exporter refuses to start on it, naming the path, before it listens
    cfg = tmp_path / "c.yml"
    cfg.write_text("targets: []\n")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--storage.path", str(bad),
                           "--web.listen-address", "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    check = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", str(cfg), "--storage.path", str(bad)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "not a stackwatch state store" in check.stderr


# ------------------------------------------------------------------ real exporters


def test_a_push_survives_kill_9_right_after_its_200(servers, tmp_path):
    cfg = write_config(tmp_path, servers, """  - {name: nightly, kind: heartbeat, schedule: {every: 1h}, token: "${HB_TOKEN}"}""")
    store = ["--storage.path", str(tmp_path / "state.db")]
    sw = Stackwatch(cfg, tmp_path, env=ENV, extra=store)
    try:
        status, body = push(sw.base, "/push/nightly/start")
        assert status == 200
        status, body = push(sw.base, "/push/nightly?duration=12.5", body=b"exported 1,204 rows",
                            headers={"Content-Type": "text/plain"})
        assert status == 200, body
        at = json.loads(body)["at"]
        sw.proc.kill()  # SIGKILL right after the 200: no shutdown, no flush
        sw.proc.wait(10)
    finally:
        sw.stop()
    again = Stackwatch(cfg, tmp_path, env=ENV, extra=store)
    try:
        text = wait_until(lambda: (lambda t: t if sample(t, "stackwatch_heartbeat_runs_total", "nightly")
                                   and runs(t, "healthy", "success") else None)(again.metrics()),
                          15, "the heartbeat (and the healthy target) after the restart")
        assert sample(text, "stackwatch_heartbeat_last_success_timestamp_seconds", "nightly") == pytest.approx(at)
        assert sample(text, "stackwatch_heartbeat_runs_total", "nightly") == 1
        assert sample(text, "stackwatch_heartbeat_starts_total", "nightly") == 1
        assert sample(text, "stackwatch_heartbeat_last_run_duration_seconds", "nightly") == 12.5
        assert runs(text, "healthy", "success") >= 1 and runs(text, "healthy", "failure") == 0
        page = http_get(again.base + "/targets/nightly")[2].decode()
        assert "exported 1,204 rows" in page
    finally:
        again.stop()


def test_thousand_checks_none_of_the_acknowledged_pushes_lost(servers, tmp_path, record_property):
    n = 1000
    checks = "\n".join(f'  - {{name: job-{i}, kind: heartbeat, interval: 5s, schedule: {{every: 1h}}, token: "${{HB_TOKEN}}"}}'
                       for i in range(n))
    cfg = write_config(tmp_path, servers, checks)
    store = ["--storage.path", str(tmp_path / "state.db")]
    sw = Stackwatch(cfg, tmp_path, env=ENV, extra=store)
    acked = [0] * n
    latencies: list[float] = []

    async def flood() -> float:
        conn = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async def one(i: int) -> None:
                started = time.perf_counter()
                async with session.post(f"{sw.base}/push/job-{i}") as resp:
                    await resp.read()
                    if resp.status == 200:
                        acked[i] += 1
                        latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _round in range(3):
                await asyncio.gather(*(one(i) for i in range(n)))
            return time.perf_counter() - started

    try:
        took = asyncio.run(flood())
        record_property("pushes_per_second", round(3 * n / took))
        record_property("push_p99_ms", round(sorted(latencies)[int(len(latencies) * 0.99)] * 1000, 1))
        assert sum(acked) == 3 * n  # none refused (each check stays under its rate limit)
        sw.proc.kill()
        sw.proc.wait(10)
    finally:
        sw.stop()
    again = Stackwatch(cfg, tmp_path, env=ENV, extra=store)
    try:
        def all_counted() -> str | None:
            text = again.metrics()
            parsed = parse(text)  # once: 1,000 look-ups follow
            return parsed if all(sample(parsed, "stackwatch_heartbeat_runs_total", f"job-{i}") is not None
                                 for i in range(n)) else None
        parsed = wait_until(all_counted, 30, "every check probed after the restart", interval=1)
        lost = [i for i in range(n) if sample(parsed, "stackwatch_heartbeat_runs_total", f"job-{i}") != acked[i]]
        assert not lost, f"{len(lost)} checks lost pushes, e.g. job-{lost[0]}"
    finally:
        again.stop()


def test_late_missed_failed_and_running_too_long_are_seen_when_due(servers, tmp_path):
    cfg = write_config(tmp_path, servers, """
  - {name: quick, kind: heartbeat, interval: 250ms, schedule: {every: 2s}, grace: 2s, token: "${HB_TOKEN}"}
  - {name: worker, kind: heartbeat, interval: 250ms, schedule: {every: 1h}, max_run_time: 2s, token: "${HB_TOKEN}"}
  - {name: backup, kind: heartbeat, interval: 250ms, schedule: {every: 1h}, token: "${HB_TOKEN}"}
""")
    sw = Stackwatch(cfg, tmp_path, env=ENV)
    try:
        status, body = push(sw.base, "/push/quick")
        assert status == 200
        at = json.loads(body)["at"]
        status, body = push(sw.base, "/push/worker/start")
        started = json.loads(body)["at"]
        assert push(sw.base, "/push/backup/3", body=b'{"message": "disk full"}',
                    headers={"Content-Type": "application/json"})[0] == 200
        seen: set[str] = set()

        def observe() -> bool:
            text = sw.metrics()
            ran = sample(text, "stackwatch_probe_last_run_timestamp_seconds", "quick")
            late, overdue = sample(text, "stackwatch_heartbeat_late", "quick"), sample(text, "stackwatch_heartbeat_overdue", "quick")
            if ran is not None and late is not None and ran > at:
                # each evaluation agrees with the schedule at the time it ran: never early
                assert overdue == (1 if ran > at + 4 else 0), (ran - at, overdue)
                assert late == (1 if at + 2 < ran <= at + 4 else 0), (ran - at, late)
                if late:
                    seen.add("late")
                if overdue:
                    assert reason(text, "quick") == "missed"
                    seen.add("missed")
            wran = sample(text, "stackwatch_probe_last_run_timestamp_seconds", "worker")
            if wran is not None and wran > started:
                too_long = reason(text, "worker") == "running_too_long"
                assert too_long == (wran > started + 2), (wran - started, too_long)
                if too_long:
                    seen.add("running_too_long")
            if reason(text, "backup") == "failed":
                assert sample(text, "stackwatch_heartbeat_last_exit_code", "backup") == 3
                seen.add("failed")
            return {"late", "missed", "running_too_long", "failed"} <= seen

        wait_until(observe, 30, "late, missed, running too long and failed", interval=0.1)
        # a success clears "failed"; the page says when the next run is due
        assert push(sw.base, "/push/backup")[0] == 200
        wait_until(lambda: reason(sw.metrics(), "backup") is None, 10, "backup up again")
        assert runs(sw.metrics(), "healthy", "failure") == 0
    finally:
        sw.stop()


def test_every_bad_push_gets_the_same_refusal_and_credentials_do_not_cross(servers, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {FAST}\n")
    cfg = write_config(tmp_path, servers, """  - {name: nightly, kind: heartbeat, schedule: {every: 1h}, token: "${HB_TOKEN}"}""")
    sw = Stackwatch(cfg, tmp_path, env=ENV, extra=["--web.config.file", str(web)], ready_url="/-/healthy")
    try:
        refusals = [
            push(sw.base, "/push/nightly", token="f" * 32),                       # wrong token
            push(sw.base, "/push/no-such-check"),                                 # unknown name
            push(sw.base, "/push/nightly", body=b"x" * 5000),                     # oversized body
            push(sw.base, "/push/token/" + "f" * 32 + "/nightly", token=None),    # wrong token in the path
            push(sw.base, "/push/nightly", token=None),                           # no token at all
            push(sw.base, "/push/nightly", token=None, headers=basic("alice", PASSWORD)),  # a scrape password
        ]
        assert len(set(refusals)) == 1 and refusals[0][0] == 403, refusals
        # the push token opens nothing else; the scrape password still works for scraping
        assert http_get(sw.base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 401
        assert http_get(sw.base + "/metrics", headers=basic("alice", PASSWORD))[0] == 200
        assert push(sw.base, f"/push/token/{TOKEN}/nightly", token=None)[0] == 200
        # bad details are named; a flood of one check is rate limited
        status, body = push(sw.base, "/push/nightly?exit_code=300")
        assert status == 400 and b"exit_code" in body
        statuses = [push(sw.base, "/push/nightly")[0] for _ in range(40)]
        assert 429 in statuses and statuses.count(200) >= 15
        log = sw.log()
        assert TOKEN not in log and "f" * 32 not in log
        text = http_get(sw.base + "/metrics", headers=basic("alice", PASSWORD))[2].decode()
        assert TOKEN not in text and runs(text, "healthy", "failure") == 0
    finally:
        sw.stop()


def test_stuck_source_timing_survives_a_restart(servers, tmp_path):
    data = tmp_path / "numbers.json"
    data.write_text('{"total": 139}')
    other = tmp_path / "other.json"
    other.write_text('{"total": 127}')
    cfg = write_config(tmp_path, servers, f"""
  - name: models
    kind: consistency
    fields: [total]
    tolerance: {{absolute: 1000}}
    sources:
      - {{name: fallback, file: {{path: "{data}", fields: {{total: $.total}}}}}}
      - {{name: database, file: {{path: "{other}", fields: {{total: $.total}}}}}}
""")
    store = ["--storage.path", str(tmp_path / "state.db")]
    def first_change(sw: Stackwatch) -> float:
        return wait_until(lambda: metric(sw.metrics(), "stackwatch_consistency_value_last_change_timestamp_seconds",
                                         target="models", source="fallback", field="total"),
                          15, "the last-change timestamp")

    sw = Stackwatch(cfg, tmp_path, extra=store)
    try:
        before = first_change(sw)
    finally:
        sw.stop()
    time.sleep(1.1)  # a restart that forgot would show a later time
    again = Stackwatch(cfg, tmp_path, extra=store)
    try:
        assert first_change(again) == before
        other.write_text('{"total": 128}')  # the other source changes: its time moves, the stuck one's does not
        wait_until(lambda: f'source="database",field="total"}} {before}' not in again.metrics()
                   and "database" in again.metrics(), 15, "the database source's change")
        assert first_change(again) == before
    finally:
        again.stop()


@pytest.fixture()
def pg_database():
    """A fresh PostgreSQL database for one test (dropped after it)."""
    import sqlalchemy

    name = "sw_state_" + uuid.uuid4().hex[:12]
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_two_replicas_sharing_postgresql_export_each_heartbeat_once(servers, tmp_path, pg_database):
    names = [f"job-{i}" for i in range(12)]
    checks = "\n".join(f'  - {{name: {n}, kind: heartbeat, interval: 250ms, schedule: {{every: 1h}}, token: "${{HB_TOKEN}}"}}'
                       for n in names)
    cfg = write_config(tmp_path, servers, checks)
    replicas = [Stackwatch(cfg, tmp_path, env=ENV, extra=["--storage.url", pg_database, "--shard.count", "2",
                                                           "--shard.index", str(i)]) for i in range(2)]
    try:
        for k, name in enumerate(names):  # each check pushed once to each replica, whoever owns it
            for sw in replicas:
                status, body = push(sw.base, f"/push/{name}")
                assert status == 200, body

        def exported() -> dict[str, list[float]] | None:
            texts = [sw.metrics() for sw in replicas]
            found = {n: [v for t in texts if (v := sample(t, "stackwatch_heartbeat_runs_total", n)) is not None]
                     for n in names}
            return found if all(v == [2.0] for v in found.values()) else None

        found = wait_until(exported, 15, "each check exported once with both pushes")
        assert set(found) == set(names)
        owners = [sum(1 for n in names if sample(sw.metrics(), "stackwatch_heartbeat_runs_total", n) is not None)
                  for sw in replicas]
        assert all(o > 0 for o in owners) and sum(owners) == len(names)
    finally:
        for sw in replicas:
            sw.stop()


def test_status_history_without_prometheus_survives_restarts_and_kill_9(servers, tmp_path):
    cfg = write_config(tmp_path, servers, f"""  - {{name: broken, kind: http, url: "{servers.url('/status/500')}"}}""")
    store = ["--storage.path", str(tmp_path / "state.db")]

    def probes(sw: Stackwatch, name: str) -> tuple[int, float | None]:
        doc = json.loads(http_get(f"{sw.base}/api/v1/targets/{name}/history?range=24h")[2])
        return sum(b["probes"] for b in doc["buckets"]), doc["uptime"]

    sw = Stackwatch(cfg, tmp_path, extra=store)
    try:
        wait_until(lambda: probes(sw, "broken")[0] >= 4 and probes(sw, "healthy")[0] >= 4, 15, "a few probes")
        sw.stop()  # SIGTERM: the history is saved on the way out
    finally:
        sw.stop()
    first = Stackwatch(cfg, tmp_path, extra=store)
    try:
        seen = probes(first, "broken")
        assert seen[0] >= 4 and seen[1] == 0.0, seen  # the probes before the restart, all failed
        assert probes(first, "healthy")[0] >= 4 and probes(first, "healthy")[1] == 1.0
    finally:
        first.proc.kill()  # no clean stop: only the periodic save counts
        first.proc.wait(10)
        first.stop()
    saved_every = {"STACKWATCH_HISTORY_SAVE_EVERY": "1"}
    second = Stackwatch(cfg, tmp_path, env=saved_every, extra=store)
    try:
        start = probes(second, "healthy")[0]
        wait_until(lambda: probes(second, "healthy")[0] >= start + 4, 15, "more probes")
        time.sleep(1.5)  # one periodic save after them
        counted = probes(second, "healthy")[0]
        second.proc.kill()
        second.proc.wait(10)
    finally:
        second.stop()
    third = Stackwatch(cfg, tmp_path, extra=store)
    try:
        assert probes(third, "healthy")[0] >= counted - 10  # at most the probes since the last save are lost
        assert probes(third, "healthy")[0] > start
    finally:
        third.stop()


def test_workers_share_the_store_and_the_supervisor_passes_pushes_on(servers, tmp_path):
    from test_workers import Supervised

    names = [f"job-{i}" for i in range(10)]
    cfg = write_config(tmp_path, servers, "\n".join(
        f'  - {{name: {n}, kind: heartbeat, interval: 250ms, schedule: {{every: 1h}}, token: "${{HB_TOKEN}}"}}'
        for n in names))
    os.environ["HB_TOKEN"] = TOKEN  # Supervised passes its own environment on
    try:
        sup = Supervised(cfg, tmp_path, extra=["--storage.path", str(tmp_path / "state.db")])
    finally:
        del os.environ["HB_TOKEN"]
    try:
        for n in names:  # once through the supervisor, once to each worker directly
            for base in (sup.base, *sup.workers):
                status, body = push(base, f"/push/{n}")
                assert status == 200, (base, body)
        assert push(sup.base, "/push/job-0", token="f" * 32) == push(sup.base, "/push/nope")
        assert push(sup.base, "/push/job-0", token="f" * 32)[0] == 403

        def exported() -> bool:
            texts = [http_get(w + "/metrics")[2].decode() for w in sup.workers]
            found = {n: [v for t in texts if (v := sample(t, "stackwatch_heartbeat_runs_total", n)) is not None]
                     for n in names}
            return all(v == [3.0] for v in found.values())

        wait_until(exported, 20, "each check exported by one worker with all three pushes")
    finally:
        sup.stop()
