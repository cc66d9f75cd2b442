"""Grafana dashboards: regenerated JSON equals the committed JSON, lint rules hold, thresholds
match THRESHOLDS.md, and every panel query returns data from a live Prometheus scraping
`stackwatch demo` (Grafana itself cannot be installed here)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import Process, Prometheus, http_get, stackwatch_scrape, wait_until
from targets import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
THRESHOLDS_MD = (ROOT / "docs" / "THRESHOLDS.md").read_text()
sys.path.insert(0, str(ROOT / "grafana"))
import build  # noqa: E402  (grafana/build.py)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def test_committed_json_is_what_the_generator_writes():
    proc = subprocess.run([sys.executable, str(ROOT / "grafana" / "build.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(DASHBOARDS) == 6


def test_lint_rules():
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids) and all(uids)
    for path in DASHBOARDS:
        text = path.read_text()
        dash = json.loads(text)
        assert "__inputs" not in dash and "${DS_" not in text, path.name
        assert dash.get("id") is None, path.name
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert variables["target"]["refresh"] == 2  # on time range change
        assert {"job", "instance", "target", "alertmanager"} <= set(variables), path.name
        assert dash["editable"] is False, path.name  # provisioned: changes belong in grafana/build.py
        assert "localhost" not in json.dumps(dash["links"]) and "localhost" not in json.dumps(
            [p.get("links") for p in dash["panels"]]), f"{path.name}: links use the $alertmanager variable"
        for p in panels(dash):
            where = f"{path.name}: {p['title']}"
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert p["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
            assert p.get("description"), f"{where} has no description"
            assert p["targets"], where
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs) and all(refs), where
            for t in p["targets"]:
                expr = t["expr"]
                assert "[5m]" not in expr and "[1m]" not in expr, f"{where}: use $__rate_interval in panels"
                assert 'target=~"$target"' in expr or "ALERTS" in expr or "up{" in expr, where
                # every raw stackwatch series is filtered by job and instance (recorded ones,
                # aggregated by target, have neither)
                for sel in re.findall(r"\b(stackwatch_\w+|up)\{([^}]*)\}", expr):
                    assert 'job=~"$job"' in sel[1] and 'instance=~"$instance"' in sel[1], f"{where}: {sel}"


SCHEMAS = ROOT / "tests" / "data" / "grafana-schema"  # Grafana 11.6's published JSON schemas (README there)


def grafana_schema(name: str, definition: str | None = None) -> dict:
    doc = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    defs = doc["definitions"]
    if name == "dashboard":
        # Where the generated JSON schema is narrower than Grafana's own schema (CUE): a threshold's
        # base step is null (-Infinity; the field's own description says so), and a matcher's
        # options and an override's value are any value (CUE `_`), e.g. a field name string.
        defs["Threshold"]["properties"]["value"]["type"] = ["number", "null"]
        defs["MatcherConfig"]["properties"]["options"] = {}
        defs["DynamicConfigValue"]["properties"]["value"] = {}
    if definition:
        doc["$ref"] = f"#/definitions/{definition}"
    return doc


def test_every_dashboard_is_valid_against_grafanas_schema():
    import jsonschema

    dashboard = jsonschema.Draft7Validator(grafana_schema("dashboard"))
    checked = 0
    for path in DASHBOARDS:
        dash = load(path)
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in dashboard.iter_errors(dash)]
        assert not errors, f"{path.name}: " + "\n".join(errors[:10])
        for p in panels(dash):
            name = p["type"].replace("-", "")  # state-timeline -> statetimeline
            options = jsonschema.Draft7Validator(grafana_schema(name, "Options"))
            errors = [f"options {list(e.absolute_path)}: {e.message[:200]}" for e in options.iter_errors(p["options"])]
            if "FieldConfig" in json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())["definitions"]:
                custom = jsonschema.Draft7Validator(grafana_schema(name, "FieldConfig"))
                errors += [f"fieldConfig.defaults.custom {list(e.absolute_path)}: {e.message[:200]}"
                           for e in custom.iter_errors(p["fieldConfig"]["defaults"].get("custom", {}))]
            assert not errors, f"{path.name}: {p['title']}: " + "; ".join(errors)
            checked += 1
    assert checked >= 40


def test_threshold_values_are_the_documented_ones():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\|\s*([A-Z]\d)\s*\|(.*)$", THRESHOLDS_MD, re.M)}
    expected_text = {"L1": "> 2 s", "L2": "> 5 s", "L3": "< 500 ms", "L4": "< 300 ms", "E1": "> 5 %",
                     "E2": "> 1 %", "A1": "99.9 %", "D2": "> 80 %", "M1": "> 10 models", "M3": "≤ 200",
                     "B6": "< 14 d warning, < 2 d critical", "B8": "> 1,000 rounds", "B9": "> 50 %"}
    assert set(build.THRESHOLDS) == set(expected_text)
    for row, text in expected_text.items():
        assert text in rows[row], (row, rows[row])
    assert build.THRESHOLDS == {"L1": 2.0, "L2": 5.0, "L3": 0.5, "L4": 0.3, "E1": 0.05, "E2": 0.01, "A1": 0.999,
                                "D2": 0.8, "M1": 10.0, "M3": 200.0, "B6": 14 * 86400.0, "B8": 1000.0, "B9": 0.5}
    assert build.B6_CRITICAL == 2 * 86400.0
    allowed_lines = set(build.THRESHOLDS.values()) | set(build.BURN_RATES) | {60.0, build.B6_CRITICAL}  # 60 s: max_round_age default
    drawn = set()
    for path in DASHBOARDS:
        for p in panels(load(path)):
            defaults = p["fieldConfig"]["defaults"]
            if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line":
                for step in defaults["thresholds"]["steps"]:
                    if step["value"] is not None:
                        assert step["value"] in allowed_lines, (path.name, p["title"], step)
                        drawn.add(step["value"])
    assert {2.0, 5.0, 0.5, 0.3, 0.05, 0.01, 0.8, 10.0} <= drawn


# Panels allowed to be empty in the demo, with the reason.
EMPTY_QUERIES = {
    ("Target details", "stackwatch_http_tls_version_info"): "a target uses https",
    ("Target details", "stackwatch_http_tls_cert_expiry_timestamp_seconds"): "a target uses https",
}
"""Single queries of a panel with data that are empty in the demo, and why."""

EMPTY_UNTIL = {
    "TLS certificate expiry": "a target uses https (the demo's services are plain http)",
    "Migrations": "a sql target sets `migrations:` (the demo's SQLite databases use no Alembic)",
    "Server connections used": "a PostgreSQL or MySQL target (the demo uses SQLite, which has no connection limit; "
                               "tests/test_e2e.py covers this metric with PostgreSQL)",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    proc = Process([sys.executable, "-m", "stackwatch", "demo", "--web.listen-address", f"127.0.0.1:{port}",
                    "--dir", str(tmp)], tmp / "demo.log")
    proc.port = port  # type: ignore[attr-defined]
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 30, "stackwatch demo")
    except AssertionError:
        proc.stop()
        raise AssertionError(proc.log()) from None
    with contextlib.ExitStack() as running:  # the demo stops even when Prometheus fails to start
        running.callback(proc.stop)
        rules = [str(ROOT / "prometheus" / "rules" / "stackwatch-recording.yml"),
                 str(ROOT / "prometheus" / "rules" / "stackwatch-alerts.yml")]
        prom = Prometheus(tmp, [stackwatch_scrape(proc)], rule_files=rules)  # type: ignore[arg-type]
        running.callback(prom.stop)
        yield proc, prom


def test_every_panel_query_returns_data_from_the_demo(demo):
    proc, prom = demo
    # The demo probes every 5 s: wait until each target has at least two probes in Prometheus,
    # so rates and the recording rules have data.
    prom.wait_for("count(sum by (target) (increase(stackwatch_probes_total[1m])) > 1)",
                  lambda r: r and float(r[0]["value"][1]) >= 9, timeout=60)
    prom.wait_for("count(target:requests:rate5m)", lambda r: r and float(r[0]["value"][1]) >= 9, timeout=30)
    empty = []
    checked = 0
    for path in DASHBOARDS:
        for p in panels(load(path)):
            for t in p["targets"]:
                expr = (t["expr"].replace("$target", ".*").replace("$__rate_interval", "1m").replace("$__range", "5m")
                        .replace("$job", ".*").replace("$instance", ".*"))
                result = prom.query(expr)
                checked += 1
                excused = [m for (title, m) in EMPTY_QUERIES if title == p["title"] and m in expr]
                if excused:
                    assert not result, f"{p['title']}: {excused} has data now: drop it from EMPTY_QUERIES"
                    continue
                if not result and p["title"] not in EMPTY_UNTIL:
                    empty.append(f"{path.name}: {p['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert checked >= 40
    # Every exception above really is empty in the demo (so the list cannot hide a broken query).
    for title, reason in EMPTY_UNTIL.items():
        exprs = [t["expr"] for path in DASHBOARDS for p in panels(load(path)) if p["title"] == title for t in p["targets"]]
        assert exprs, title
        assert all(not prom.query(e.replace("$target", ".*").replace("$job", ".*").replace("$instance", ".*"))
                   for e in exprs), f"{title} has data now: drop it from EMPTY_UNTIL"


def test_demo_shows_the_seed_failures(demo):
    _, prom = demo
    prom.wait_for('stackwatch_probe_failure_reason{target="trading-db"} == 1', timeout=30)
    reasons = {r["metric"]["target"]: r["metric"]["reason"] for r in prom.query("stackwatch_probe_failure_reason == 1")}
    assert reasons.get("esg-backend") == "connection_refused"
    assert reasons.get("esg-db") == "not_configured"
    assert reasons.get("trading-db") == "schema"
    assert reasons.get("ai-go-models") == "invariant"
    assert prom.value('stackwatch_algorand_asset_exists{asset="pam-token"}') == 0
    assert reasons.get("nightly-export") == "failed"  # the demo's failed nightly run, reported to its heartbeat
    assert prom.value('stackwatch_algorand_account_fee_headroom_transactions{account="admin"}') == 0
    # The AI-GO cache is read from Redis (tests/run.sh starts one): its key never expires
    assert prom.value('stackwatch_consistency_redis_key_ttl_seconds{target="ai-go-models",source="cache"}') == -1
    assert prom.value('stackwatch_consistency_source_success{target="ai-go-models",source="cache"}') == 1
    # trading-backend fails every 4th request: some failures, some successes
    assert prom.wait_for('increase(stackwatch_probes_total{target="trading-backend",result="failure"}[1m]) > 0',
                         timeout=30)


def test_provisioning_files():
    ds = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "stackwatch.yml").read_text())
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["alertmanager"]["jsonData"]["implementation"] == "prometheus"
    prov = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "stackwatch.yml").read_text())
    assert prov["providers"][0]["type"] == "file" and prov["providers"][0]["folder"] == "stackwatch"
    # the compose file mounts the dashboards where the provider looks for them
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{prov['providers'][0]['options']['path']}:ro" in mounts
