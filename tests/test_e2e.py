"""End to end: stackwatch as a process, scraped every second by the real Prometheus (Debian package)."""

from __future__ import annotations

import contextlib
import gzip
import html
import signal
import subprocess
from pathlib import Path

import pytest
from fake_algod import ADMIN, PAM_ASSET, fake_algod, seed_000_state
from expo import find, samples, value as metric
from harness import (
    Prometheus,
    Stackwatch,
    http_get,
    http_post,
    require_binary,
    stackwatch_scrape,
    wait_until,
)

TOKEN = "s3cr3t-token-value"  # what tests/targets.py /auth accepts
ALGOD_TOKEN = "e2e-algod-token-" + "b" * 48


def write_config(path: Path, servers, extra: str = "", pg_schema: str = "public", algod_url: str = "") -> Path:
    from test_consistency_probe import MODELS_SQL, make_models_db

    models_db = path.parent / "models.db"
    if not models_db.exists():
        make_models_db(models_db)
    fallback = path.parent / "fallback.json"
    fallback.write_text('{"totalModels": 139}')
    path.write_text(f"""defaults:
  interval: 1s
  timeout: 800ms
  labels: {{env: e2e}}
targets:
  - name: healthy
    kind: http
    url: {servers.url('/health')}
    assertions: ["$.status == healthy", "len($.features) > 0"]
    info: {{version: $.version, feature: $.features}}
  - name: broken-500
    kind: http
    url: {servers.url('/500')}
  - name: degraded
    kind: http
    url: {servers.url('/degraded')}
    assertions: ["$.status == healthy"]
  - name: refused
    kind: http
    url: http://127.0.0.1:{servers.closed_port}/
  - name: hangs
    kind: http
    url: http://127.0.0.1:{servers.hang_port}/
    timeout: 500ms
  - name: tls
    kind: http
    url: {servers.https_url('/auth')}
    tls_config: {{ca_file: {servers.tls['ca']}}}
    authorization: {{credentials: "${{E2E_TOKEN}}"}}
  - name: energy
    kind: json
    url: {servers.url('/api/v1/energy/overview')}
    namespace: energy
    metrics:
      - name: pool_level_percent
        help: Energy pool fill level per partner.
        path: $.partners[*]
        value: $.level_percent
        labels: {{partner_id: $.partner_id}}
      - name: pool_status
        path: $.partners[*]
        value: $.status
        labels: {{partner_id: $.partner_id}}
        value_map: {{normal: 1, low: 0.5, empty: 0}}
  - name: trading-db
    kind: sql
    url: postgresql+psycopg://postgres@127.0.0.1:5432/test
    schema:
      schema: {pg_schema}
      tables: [{{name: strategies, columns: [id, strategy_type]}}]
  - name: ai-go-models
    kind: consistency
    fields: [total, active]
    tolerance: {{absolute: 10}}
    invariants: [active <= total]
    sources:
      - {{name: database, priority: 1, sql: {{url: "sqlite:///{models_db}", query: "{MODELS_SQL}"}}}}
      - {{name: api, priority: 2, http: {{url: "{servers.url('/ai-go/realtime-stats')}",
          fields: {{total: $.totalModels, active: $.activeModels}}, served_path: $.dataSource}}}}
      - {{name: fallback, priority: 3, file: {{path: "{fallback}", fields: {{total: $.totalModels}}}}}}
  - name: pam-talk-chain
    kind: algorand
    algod_url: {algod_url or "http://127.0.0.1:1"}
    algod_token: "${{E2E_ALGOD_TOKEN}}"
    network: testnet-v1.0
    accounts: [{{alias: admin, address: {ADMIN}, min_balance_algo: 1}}]
    assets: [{{alias: pam-token, id: {PAM_ASSET}, creator: {ADMIN}, holders: [admin]}}]
{extra}""")
    return path


@pytest.fixture(scope="module")
def pg_schema():
    """A PostgreSQL schema whose strategies table lacks strategy_type (seed 004)."""
    import secrets

    import sqlalchemy as sa

    name = f"sw_e2e_{secrets.token_hex(3)}"
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {name}")
        c.exec_driver_sql(f"CREATE TABLE {name}.strategies (id serial PRIMARY KEY, name text)")
    yield name
    with engine.connect() as c:
        c.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
    engine.dispose()


@pytest.fixture(scope="module")
def algod():
    """A fake algod in the seed 000 state (no Algorand node is reachable here; see tests/fake_algod.py)."""
    with fake_algod(ALGOD_TOKEN, seed_000_state) as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(servers, tmp_path_factory, pg_schema, algod):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = write_config(tmp / "stackwatch.yml", servers, pg_schema=pg_schema, algod_url=algod.algod_url)
    with contextlib.ExitStack() as running:  # stops what started, even when a later start fails
        sw = Stackwatch(cfg, tmp, env={"E2E_TOKEN": TOKEN, "E2E_ALGOD_TOKEN": ALGOD_TOKEN})
        running.callback(sw.stop)
        prom = Prometheus(tmp, [stackwatch_scrape(sw)])
        running.callback(prom.stop)
        yield sw, prom, cfg
    assert TOKEN not in sw.log() and ALGOD_TOKEN not in sw.log(), "a secret reached the log"


def test_prometheus_ingests_success_and_reasons(stack):
    sw, prom, _ = stack
    prom.wait_for('count(stackwatch_probe_success{env="e2e"})', lambda r: r and float(r[0]["value"][1]) == 10)
    up = {r["metric"]["target"]: float(r["value"][1]) for r in prom.query("stackwatch_probe_success")}
    assert up == {"healthy": 1, "tls": 1, "energy": 1, "broken-500": 0, "degraded": 0, "refused": 0, "hangs": 0,
                  "trading-db": 0, "ai-go-models": 0, "pam-talk-chain": 1}
    reasons = {r["metric"]["target"]: r["metric"]["reason"] for r in prom.query("stackwatch_probe_failure_reason == 1")}
    assert reasons == {"broken-500": "http_status", "degraded": "assertion", "refused": "connection_refused",
                       "hangs": "timeout", "trading-db": "schema", "ai-go-models": "disagreement"}
    assert prom.value('stackwatch_http_status_code{target="broken-500"}') == 500
    versions = prom.query('stackwatch_http_body_info{target="healthy",key="version"}')
    assert [v["metric"]["value"] for v in versions] == ["3.0.0-social"]
    assert prom.value('count(stackwatch_http_body_info{target="healthy",key="feature"})') == 3


def test_json_target_series_and_labels_ingested(stack):
    _, prom, _ = stack
    levels = prom.wait_for("stackwatch_energy_pool_level_percent", lambda r: len(r) == 2)
    by_partner = {r["metric"]["partner_id"]: float(r["value"][1]) for r in levels}
    assert by_partner == {"P-001": 82.0, "P-002": 12.5}
    assert set(levels[0]["metric"]) == {"__name__", "instance", "job", "target", "kind", "env", "partner_id"}
    low = prom.query("stackwatch_energy_pool_status < 1")
    assert [(r["metric"]["partner_id"], r["value"][1]) for r in low] == [("P-002", "0.5")]
    meta = prom.api("metadata", metric="stackwatch_energy_pool_level_percent")
    assert meta["stackwatch_energy_pool_level_percent"][0]["help"] == "Energy pool fill level per partner."


def test_sql_target_ingested(stack):
    _, prom, _ = stack
    prom.wait_for('stackwatch_sql_up{target="trading-db"} == 1')
    missing = prom.query("stackwatch_sql_schema_column_present == 0")
    assert [(r["metric"]["table"], r["metric"]["column"]) for r in missing] == [("strategies", "strategy_type")]
    ratio = prom.value('stackwatch_sql_server_connections_utilization_ratio{target="trading-db"}')
    assert ratio is not None and 0 < ratio < 1


def test_consistency_target_ingested(stack):
    _, prom, _ = stack
    totals = prom.wait_for('stackwatch_consistency_value{target="ai-go-models",field="total"}', lambda r: len(r) == 3)
    assert {r["metric"]["source"]: float(r["value"][1]) for r in totals} == {"database": 63, "api": 63, "fallback": 139}
    assert prom.value('stackwatch_consistency_spread{target="ai-go-models",field="total"}') == 76
    assert prom.value('stackwatch_consistency_field_agreement{field="active"}') == 1
    served = prom.query("stackwatch_consistency_source_served == 1")
    assert [r["metric"]["source"] for r in served] == ["database"]


def test_algorand_target_in_the_seed_000_state(stack):
    _, prom, _ = stack
    prom.wait_for('stackwatch_algorand_asset_exists{target="pam-talk-chain"}')
    assert prom.value('stackwatch_algorand_asset_exists{asset="pam-token"}') == 0
    assert prom.value('stackwatch_algorand_account_balance_microalgos{account="admin"}') == 0
    assert prom.value('stackwatch_algorand_account_fee_headroom_transactions{account="admin"}') == 0
    assert prom.value('stackwatch_algorand_network_match{target="pam-talk-chain"}') == 1


def test_latency_histogram_and_error_ratio_are_queryable(stack):
    _, prom, _ = stack
    # The histogram has exact edges at the documented thresholds (THRESHOLDS.md L1-L4).
    les = {r["metric"]["le"] for r in prom.query('stackwatch_probe_duration_seconds_bucket{target="healthy"}')}
    assert {"0.3", "0.5", "1.0", "2.0", "5.0"} <= les
    p95 = prom.wait_for('histogram_quantile(0.95, rate(stackwatch_probe_duration_seconds_bucket{target="healthy"}[30s]))',
                        lambda r: r and r[0]["value"][1] != "NaN")
    assert 0 < float(p95[0]["value"][1]) <= 0.3
    ratio = prom.wait_for('sum by (target) (rate(stackwatch_probes_total{result="failure"}[30s])) '
                          '/ sum by (target) (rate(stackwatch_probes_total[30s]))',
                          lambda r: len(r) == 10 and all(x["value"][1] != "NaN" for x in r))
    by_target = {r["metric"]["target"]: float(r["value"][1]) for r in ratio}
    assert by_target["healthy"] == 0 and by_target["refused"] == 1


def test_promtool_check_metrics_passes_on_real_output(stack):
    sw, prom, _ = stack
    wait_until(lambda: find(sw.metrics(), "stackwatch_http_tls_cert_expiry_timestamp_seconds"), 10, "TLS metrics")
    body = http_get(sw.base + "/metrics", headers={"Accept": "text/plain"})[2]
    proc = subprocess.run([require_binary("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    # The exporter's own process, Python and GC series (prometheus_client's collectors).
    for series in (b"\nprocess_cpu_seconds_total ", b"\nprocess_resident_memory_bytes ", b"\npython_info{",
                   b"\npython_gc_objects_collected_total{", b"\nstackwatch_config_reload_failures_total ",
                   b'\nstackwatch_scheduler_lag_seconds_bucket{le="+Inf"} '):
        assert series in body, series
    # promtool only parses the text format; Prometheus itself asks for OpenMetrics first,
    # so a clean scrape proves the OpenMetrics output parses too.
    def scraped() -> list | None:  # (the first scrape may not have happened yet)
        found = [(t["health"], t["lastError"]) for t in prom.api("targets")["activeTargets"]]
        return found if found and found[0][0] != "unknown" else None

    assert wait_until(scraped, 30, "a scrape of stackwatch") == [("up", "")]


def test_metrics_content_negotiation_and_gzip(stack):
    sw, _, _ = stack
    status, headers, body = http_get(sw.base + "/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in body
    status, headers, body = http_get(sw.base + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert metric(body, "stackwatch_probes_total", target="healthy", result="success") > 0  # parsed as OpenMetrics
    status, headers, body = http_get(sw.base + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert metric(gzip.decompress(body), "stackwatch_build_info") == 1


def test_no_secret_in_metrics_debug_page_or_status_page(stack):
    sw, _, _ = stack
    pages = [sw.metrics(), http_get(sw.base + "/")[2].decode(),
             http_get(sw.base + "/probe?target=tls&debug=true")[2].decode()]
    for page in pages:
        assert TOKEN not in page
    assert "credentials: <secret>" in pages[2]


def test_probe_endpoint_runs_one_target_now(stack):
    sw, _, _ = stack
    status, _, body = http_get(sw.base + "/probe?target=degraded")
    text = body.decode()
    assert status == 200
    assert metric(text, "stackwatch_probe_success", target="degraded", kind="http", env="e2e") == 0
    assert metric(text, "stackwatch_probe_failure_reason", target="degraded", reason="assertion") == 1
    assert not find(text, "stackwatch_build_info")  # self metrics stay on /metrics
    status, _, body = http_get(sw.base + "/probe?target=degraded&debug=true")
    debug = body.decode()
    assert "assertion FAILED: $.status (degraded) == healthy" in debug
    assert "Target configuration (secrets masked):" in debug
    assert http_get(sw.base + "/probe?target=nope")[0] == 404
    assert http_get(sw.base + "/probe")[0] == 400


def test_status_page_lists_every_target_with_reason(stack):
    sw, _, _ = stack
    page = wait_until(lambda: (lambda p: "HTTP status 500" in p and p)(http_get(sw.base + "/")[2].decode()), 10,
                      "the status page with results")
    for name in ("healthy", "broken-500", "degraded", "refused", "hangs", "tls", "energy", "trading-db", "ai-go-models", "pam-talk-chain"):
        assert f"'targets/{name}'>{name}</a></td>" in page
    assert "http_status: HTTP status 500; expected 2xx" in page
    # The chain target is reachable but its token does not exist and its admin holds 0 ALGO:
    # degraded, with the failing checks named in words (not a plain "up").
    def chain_row() -> str:
        text = http_get(sw.base + "/")[2].decode()
        return next((row for row in text.split("<tr") if ">pam-talk-chain</a></td>" in row), "")
    row = wait_until(lambda: "degraded" in chain_row() and chain_row(), 10, "the chain target degraded")
    assert "class='degraded'" in row
    assert "asset pam-token does not exist on this network" in html.unescape(row)
    assert "account admin is below its balance floor" in html.unescape(row)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])  # uvloop is the default; asyncio where it is missing
def test_reload_valid_then_invalid_then_sighup(servers, tmp_path, loop):
    cfg = tmp_path / "reload.yml"
    cfg.write_text(f"""defaults: {{interval: 1s}}
targets:
  - {{name: first, kind: http, url: "{servers.url('/health')}"}}
""")
    sw = Stackwatch(cfg, tmp_path, extra=["--web.enable-lifecycle", "--event-loop", loop])
    try:
        wait_until(lambda: find(sw.metrics(), "stackwatch_probe_success", target="first"), 10, "first probe")
        # A valid reload changes the target set.
        cfg.write_text(f"""defaults: {{interval: 1s}}
targets:
  - {{name: first, kind: http, url: "{servers.url('/health')}"}}
  - {{name: second, kind: http, url: "{servers.url('/500')}"}}
""")
        status, body = http_post(sw.base + "/-/reload")
        assert status == 200 and b"OK, 2 targets" in body
        wait_until(lambda: metric(sw.metrics(), "stackwatch_probe_success", target="second") == 0, 10, "second")
        # An invalid one is rejected with its error; the running targets keep being probed.
        cfg.write_text("targets:\n  - {name: third, kind: http, url: http://x/, timeout: fast}\n")
        status, body = http_post(sw.base + "/-/reload")
        assert status == 400
        assert 'targets[0].timeout (line 2, column 47): expected a duration like 5s, got "fast"' in body.decode()
        text = sw.metrics()
        assert metric(text, "stackwatch_config_last_reload_successful") == 0
        assert not find(text, "stackwatch_probe_timeout_seconds", target="third")
        before = _runs(sw, "first")
        wait_until(lambda: _runs(sw, "first") > before, 5, "first still probed after a bad reload")
        assert "reload failed, keeping the running config" in sw.log()
        # SIGHUP reloads too.
        cfg.write_text(f"targets:\n  - {{name: fourth, kind: http, url: \"{servers.url('/health')}\", interval: 1s}}\n")
        sw.signal(signal.SIGHUP)
        # the parsed sample, not the text: the metric's HELP line contains "... successful 1" too
        wait_until(lambda: metric(sw.metrics(), "stackwatch_config_last_reload_successful") == 1, 10, "SIGHUP reload")
        text = sw.metrics()
        assert {lab["target"] for _, lab, _ in samples(text) if "target" in lab} == {"fourth"}
        assert metric(text, "stackwatch_event_loop_info", loop=loop) == 1
        assert http_get(sw.base + "/-/reload")[0] == 405
    finally:
        sw.stop()


def _runs(sw: Stackwatch, target: str) -> int:
    return int(sum(v for _, v in find(sw.metrics(), "stackwatch_probes_total", target=target)))
