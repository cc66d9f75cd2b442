"""kind: consistency with the seed 002 model counts: a real SQLite database (63/51/49/1/1), the
live API, a cache that lags, a fallback file hard-coded to 139 and a buggy source (127 of 63)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from probing import run_probe
from stackwatch.series import render_result
from stackwatch.config import ConfigError
from stackwatch.kinds import parse_config
from targets import AI_GO_CACHED
from expo import value as metric

FIELDS = "[total, active, operational, degraded, outage]"
API_FIELDS = ("{total: $.totalModels, active: $.activeModels, operational: $.operationalModels, "
              "degraded: $.degradedModels, outage: $.outageModels}")


def make_models_db(path: Path) -> None:
    """63 models: 49 operational, 1 degraded, 1 outage (51 active), 12 retired."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, status TEXT)")
    rows = ["operational"] * 49 + ["degraded"] + ["outage"] + ["retired"] * 12
    db.executemany("INSERT INTO models (status) VALUES (?)", [(r,) for r in rows])
    db.commit()
    db.close()


MODELS_SQL = ("SELECT count(*) AS total, sum(status != 'retired') AS active, sum(status = 'operational') AS operational, "
              "sum(status = 'degraded') AS degraded, sum(status = 'outage') AS outage FROM models")


def ai_go_target(servers, tmp: Path, extra_sources: str = "", tolerance: str = "{absolute: 10}"):
    db = tmp / "models.db"
    if not db.exists():
        make_models_db(db)
    fallback = tmp / "fallback.json"
    fallback.write_text(json.dumps({"totalModels": 139, "activeModels": 139}))
    text = f"""targets:
  - name: ai-go-models
    kind: consistency
    timeout: 3s
    fields: {FIELDS}
    tolerance: {tolerance}
    invariants: ["active <= total", "operational + degraded + outage <= active", "0 <= total <= 200"]
    sources:
      - name: database
        priority: 1
        sql: {{url: "sqlite:///{db}", query: "{MODELS_SQL}"}}
      - name: api
        priority: 2
        http: {{url: "{servers.url('/ai-go/realtime-stats')}", fields: {API_FIELDS}, served_path: $.dataSource}}
      - name: cache
        priority: 3
        http: {{url: "{servers.url('/ai-go/cached-stats')}", fields: {API_FIELDS}}}
      - name: fallback
        priority: 4
        file: {{path: "{fallback}", fields: {{total: $.totalModels, active: $.activeModels}}}}
{extra_sources}"""
    return parse_config(text).targets[0]


async def probe(t):
    r = await run_probe(t)
    return r, "".join(render_result(t, r).values())


def series(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            out[",".join(p for p in labels.split(",") if not p.startswith(("target=", "kind=")))] = float(value)
    return out


async def test_seed_002_sources_values_invariants_spread_agreement(servers, tmp_path):
    buggy = f"""      - name: buggy
        priority: 5
        http: {{url: "{servers.url('/ai-go/buggy-stats')}", fields: {API_FIELDS}}}
"""
    t = ai_go_target(servers, tmp_path, buggy)
    r, text = await probe(t)
    values = series(text, "stackwatch_consistency_value")
    assert {k: v for k, v in values.items() if 'field="total"' in k} == {
        'source="database",field="total"': 63, 'source="api",field="total"': 63, 'source="cache",field="total"': 60,
        'source="fallback",field="total"': 139, 'source="buggy",field="total"': 63}
    assert values['source="database",field="active"'] == 51
    assert values['source="database",field="operational"'] == 49
    assert values['source="buggy",field="active"'] == 127
    assert set(series(text, "stackwatch_consistency_source_success").values()) == {1}
    assert series(text, "stackwatch_consistency_source_served") == {
        'source="database"': 1, 'source="api"': 0, 'source="cache"': 0, 'source="fallback"': 0, 'source="buggy"': 0}
    violated = {k: v for k, v in series(text, "stackwatch_consistency_invariant_violated").items() if v == 1}
    assert violated == {'source="buggy",invariant="active <= total"': 1}
    # the fallback's 139 is within 0 <= total <= 200 but breaks nothing else it has fields for
    assert series(text, "stackwatch_consistency_invariant_violated")['source="fallback",invariant="0 <= total <= 200"'] == 0
    spread = series(text, "stackwatch_consistency_spread")
    assert spread['field="total"'] == 139 - 60 and spread['field="active"'] == 139 - 50
    assert series(text, "stackwatch_consistency_spread_ratio")['field="total"'] == pytest.approx(79 / 139)
    assert series(text, "stackwatch_consistency_field_agreement") == {
        'field="total"': 0, 'field="active"': 0, 'field="operational"': 1, 'field="degraded"': 1, 'field="outage"': 1}
    assert metric(text, "stackwatch_consistency_agreement", target="ai-go-models", kind="consistency") == 0
    assert (r.success, r.reason.value) == (False, "invariant")
    assert r.message == "buggy: active <= total (active=127, total=63)"


async def test_disagreement_without_invariant_violation(servers, tmp_path):
    t = ai_go_target(servers, tmp_path)
    r, _ = await probe(t)
    assert (r.success, r.reason.value) == (False, "disagreement")
    assert r.message == ("sources disagree on total: database=63, api=63, cache=60, fallback=139; "
                         "active: database=51, api=51, cache=50, fallback=139")


async def test_last_change_timestamps_advance_only_for_sources_that_change(servers, tmp_path):
    t = ai_go_target(servers, tmp_path)
    _, first = await probe(t)
    before = series(first, "stackwatch_consistency_value_last_change_timestamp_seconds")
    AI_GO_CACHED["totalModels"] = 62  # the cache catches up a little
    try:
        import asyncio

        await asyncio.sleep(0.05)
        _, second = await probe(t)
    finally:
        AI_GO_CACHED["totalModels"] = 60
    after = series(second, "stackwatch_consistency_value_last_change_timestamp_seconds")
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {'source="cache",field="total"'}
    assert after['source="cache",field="total"'] > before['source="cache",field="total"']


async def test_a_failed_source_does_not_fail_the_others(servers, tmp_path):
    extra = """      - name: gone
        http: {url: "http://127.0.0.1:1/stats", fields: {total: $.totalModels}}
"""
    t = ai_go_target(servers, tmp_path, extra, tolerance="{absolute: 100}")
    r, text = await probe(t)
    assert r.success, r.message  # 139 vs 60 is within 100; the unreachable source is reported on its own
    assert series(text, "stackwatch_consistency_source_success")['source="gone"'] == 0
    assert series(text, "stackwatch_consistency_source_failure_reason") == {
        'source="gone",reason="connection_refused"': 1}
    assert 'source="gone",field=' not in text


async def test_local_vs_deployed_relative_tolerance(servers, tmp_path):
    def target(relative: float):
        return parse_config(f"""targets:
  - name: local-vs-deployed
    kind: consistency
    fields: [total]
    tolerance: {{relative: {relative}}}
    sources:
      - {{name: local, http: {{url: "{servers.url('/ai-go/realtime-stats')}", fields: {{total: $.totalModels}}}}}}
      - {{name: deployed, http: {{url: "{servers.url('/ai-go/cached-stats')}", fields: {{total: $.totalModels}}}}}}
""").targets[0]

    r, text = await probe(target(0.05))  # 63 vs 60: 4.8 % apart
    assert r.success, r.message
    assert series(text, "stackwatch_consistency_spread_ratio") == {'field="total"': pytest.approx(3 / 63)}
    r, _ = await probe(target(0.04))
    assert r.reason.value == "disagreement"


@pytest.mark.parametrize("body,error", [
    ("invariants: ['active <= bogus']", 'invariant "active <= bogus" uses bogus, which is not a field'),
    ("invariants: ['__import__(\"os\") == 1']", 'may only use field names, numbers, + - * / and comparisons'),
    ("invariants: ['active + total']", 'must compare, e.g. "active <= total"'),
])
def test_invariant_config_errors(body, error):
    with pytest.raises(ConfigError) as info:
        parse_config(f"""targets:
  - name: t
    kind: consistency
    fields: [total, active]
    {body}
    sources:
      - {{name: a, file: {{path: /x.json, fields: {{total: $.t}}}}}}
      - {{name: b, file: {{path: /y.json, fields: {{total: $.t}}}}}}
""")
    assert error in str(info.value)


async def test_unreadable_file_sources_fail_as_file_error(tmp_path):
    """A missing or unreadable fallback file is a file problem, not a connection one."""
    from probing import run_probe

    t = parse_config(f"""targets:
  - name: t
    kind: consistency
    fields: [total]
    sources:
      - {{name: a, file: {{path: "{tmp_path / 'missing-a.json'}", fields: {{total: $.t}}}}}}
      - {{name: b, file: {{path: "{tmp_path / 'missing-b.json'}", fields: {{total: $.t}}}}}}
""").targets[0]
    r = await run_probe(t)
    assert (r.success, r.reason.value) == (False, "file_error"), r.message
    assert "missing-a.json" in r.message and "No such file or directory" in r.message


async def test_an_unconfigured_sql_source_is_reported_like_an_unconfigured_sql_target(servers, tmp_path, monkeypatch):
    """One SQLConnection model for kind: sql and SQL sources: an empty URL (the deployment never
    set it) loads, and the probe names it not_configured; the other sources are still read."""
    monkeypatch.delenv("NEVER_SET_DB_URL", raising=False)
    extra = """      - name: replica
        priority: 6
        sql: {url: "${NEVER_SET_DB_URL:-}", query: "SELECT 1 AS total"}
"""
    t = ai_go_target(servers, tmp_path, extra)
    r, text = await probe(t)
    ok = series(text, "stackwatch_consistency_source_success")
    assert ok['source="replica"'] == 0 and ok['source="database"'] == 1 and ok['source="api"'] == 1
    assert series(text, "stackwatch_consistency_source_failure_reason") == {
        'source="replica",reason="not_configured"': 1}
    assert any("source replica (sql) failed: not_configured: the database is not configured" in line for line in r.log)
    sql_target = parse_config('targets:\n  - {name: db, kind: sql, url: "${NEVER_SET_DB_URL:-}"}\n').targets[0]
    sql_result = await run_probe(sql_target)
    assert sql_result.reason.value == "not_configured"
    assert sql_result.message.split(":")[0] == "the database is not configured"


def test_a_password_inside_a_source_url_fails_the_load_as_in_kind_sql(tmp_path):
    for kind_text in ('{name: db, kind: sql, url: "postgresql+psycopg://u:hunter2@h/db"}',
                      '{name: c, kind: consistency, fields: [n], sources: ['
                      '{name: s, sql: {url: "postgresql+psycopg://u:hunter2@h/db", query: "SELECT 1 AS n"}}]}'):
        with pytest.raises(ConfigError) as info:
            parse_config(f"targets:\n  - {kind_text}\n")
        text = info.value.render()
        assert "a password in the URL is not accepted" in text and "hunter2" not in text
