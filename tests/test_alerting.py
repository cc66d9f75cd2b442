"""The Prometheus rules and the Alertmanager bundle, checked with the real promtool and amtool,
and delivered end to end: stackwatch -> Prometheus -> Alertmanager -> webhook and Telegram."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import (
    Process,
    Prometheus,
    Stackwatch,
    http_get,
    require_binary,
    stackwatch_scrape,
    wait_until,
)
from receivers import Receivers, dump
from stackwatch import bundle
from targets import FLAKY_MODE

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules"
ALERTS_FILE = RULES / "stackwatch-alerts.yml"
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
AM_TEMPLATES = ROOT / "alertmanager" / "templates"
RUNBOOK = ROOT / "docs" / "runbook.md"
THRESHOLDS = ROOT / "docs" / "THRESHOLDS.md"  # copy of the thresholds document
BOT_TOKEN = "123456:TEST-bot-token-for-ci"
CHAT_ID = -1001234567890

# THRESHOLDS.md alert rows whose probe kind does not exist yet, with the issue that adds them.
PENDING_ROWS: dict[str, str] = {}


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120,
                          input=stdin.decode() if stdin else None)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# ------------------------------------------------------------------------ promtool


def test_promtool_check_config_and_lint_rules():
    promtool = require_binary("promtool")
    proc = run(promtool, "check", "config", str(ROOT / "prometheus" / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, sorted(RULES.glob("*.yml"))))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=[p.stem for p in RULE_TESTS])
def test_promtool_rule_unit_tests(path):
    proc = subprocess.run([require_binary("promtool"), "test", "rules", path.name], cwd=path.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_follows_the_mixin_conventions():
    runbook = RUNBOOK.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Stackwatch([A-Z][a-z0-9]*|TLS)+", name), name
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert "for" in rule, f"{name} has no for"
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert ann["summary"][0].isupper() and ann["summary"].endswith(".") and "{{" not in ann["summary"], name
        if name != "StackwatchWatchdog":  # the one alert with nothing to template
            assert "{{" in ann["description"], f"{name}: description must be templated"
        assert ann["runbook_url"].endswith("/docs/runbook.md#" + name.lower()), name
        assert f"\n## {name}\n" in runbook, f"docs/runbook.md has no section for {name}"


def test_every_alert_has_firing_and_silent_unit_tests():
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (firing if t.get("exp_alerts") else silent).add(t["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts without a test that shows them firing"
    assert names - silent == set(), "alerts without a test that shows them silent"


def test_every_thresholds_row_with_an_alert_is_covered_or_pending():
    rows = {}
    for line in THRESHOLDS.read_text().splitlines():
        m = re.match(r"\|\s*([A-Z]\d)\s*\|(.*)", line)
        if m:
            rows[m.group(1)] = m.group(2)
    alert_rows = {rid for rid, text in rows.items()
                  if re.search(r"critical|warning|\| alert \|", text) and "dashboard" not in text.split("|")[-3]}
    assert alert_rows >= {"L1", "L2", "E1", "E2", "A2", "D1", "D2", "D3", "D4", "M1", "M3", "M4", "M5", "R1", "R2",
                          "B1", "B2", "B3", "B4"}
    covered = set(re.findall(r"# THRESHOLDS\.md ([A-Z]\d)\b", ALERTS_FILE.read_text()))
    assert covered & set(PENDING_ROWS) == set(), "a pending row is covered now: remove it from PENDING_ROWS"
    assert alert_rows - covered - set(PENDING_ROWS) == set(), "THRESHOLDS.md alert rows without an alert"
    assert {"A1", "L1", "L2", "E1", "E2", "A2", "R1", "R2", "D1", "D2", "D3", "D4", "M1", "M2", "M3", "M4",
            "M5", "B1", "B2", "B3", "B4"} <= covered


# ------------------------------------------------------------------------ Alertmanager


def render_alertmanager(dest: Path, telegram_api_url: str | None = None, webhook_url: str | None = None,
                        fast: bool = False) -> Path:
    return bundle.render_alertmanager(dest, BOT_TOKEN, telegram_api_url, webhook_url, fast=fast, email=not fast)


def test_amtool_check_config(tmp_path):
    proc = run(require_binary("amtool"), "check-config", str(render_alertmanager(tmp_path / "am.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 receivers" in proc.stdout and "7 inhibit rules" in proc.stdout


@pytest.mark.parametrize("labels,receiver", [
    (["alertname=StackwatchTargetDown", "severity=critical", "target=esg-backend"], "oncall-critical"),
    (["alertname=StackwatchHighErrorRate", "severity=warning", "target=esg-backend"], "team-warning"),
    (["alertname=StackwatchSomethingInfo", "severity=info"], "null"),
    (["alertname=StackwatchWatchdog", "severity=info"], "null"),
    (["alertname=UnlabelledAlert"], "team-warning"),
])
def test_amtool_routes_each_severity_to_its_receivers(tmp_path, labels, receiver):
    cfg = render_alertmanager(tmp_path / "am.yml")
    proc = run(require_binary("amtool"), "config", "routes", "test", f"--config.file={cfg}",
               f"--verify.receivers={receiver}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receiver


def test_telegram_template_stays_under_4096_characters_and_escapes_html(tmp_path):
    alerts = [{"status": "firing", "labels": {"alertname": "StackwatchTargetDown", "severity": "critical",
                                              "target": f"svc-{i}<script>"},
               "annotations": {"summary": "A monitored target fails its probe.", "description": "d" * 2000,
                               "runbook_url": "https://github.com/stackwatch/stackwatch/blob/main/docs/runbook.md#x"},
               "startsAt": "2026-11-22T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p",
               "fingerprint": str(i)} for i in range(200)]
    data = {"receiver": "oncall-critical", "status": "firing", "alerts": alerts,
            "groupLabels": {"alertname": "StackwatchTargetDown"},
            "commonLabels": {"alertname": "StackwatchTargetDown", "severity": "critical"},
            "commonAnnotations": {}, "externalURL": "http://am"}
    (tmp_path / "data.json").write_text(json.dumps(data))
    proc = run(require_binary("amtool"), "template", "render", f"--template.glob={AM_TEMPLATES}/*.tmpl",
               f"--template.data={tmp_path / 'data.json'}", "--template.type=html",
               '--template.text={{ template "stackwatch.telegram.message" . }}')
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert len(text) < 4096
    assert text.startswith("🔥 <b>FIRING: 200</b> StackwatchTargetDown")
    assert "… and 200 firing in all; see Alertmanager." in text
    assert "&lt;script&gt;" in text and "<script>" not in text


def test_one_notification_lists_each_condition_of_a_target(tmp_path):
    """Alerts are grouped by target and severity: one message names the target once and lists
    each condition with its numbers."""
    def alert(name: str, description: str) -> dict:
        return {"status": "firing", "labels": {"alertname": name, "severity": "critical", "target": "trading"},
                "annotations": {"summary": name, "description": description}, "startsAt": "2026-11-22T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://p", "fingerprint": name}
    data = {"receiver": "oncall-critical", "status": "firing",
            "alerts": [alert("StackwatchHighResponseTime", "p95 response time of trading (probe) is 2.5s (threshold 2s)."),
                       alert("StackwatchErrorRateCritical", "trading is failing 30% of requests (threshold 5%).")],
            "groupLabels": {"target": "trading", "severity": "critical"},
            "commonLabels": {"target": "trading", "severity": "critical"}, "commonAnnotations": {},
            "externalURL": "http://am"}
    (tmp_path / "data.json").write_text(json.dumps(data))
    proc = run(require_binary("amtool"), "template", "render", f"--template.glob={AM_TEMPLATES}/*.tmpl",
               f"--template.data={tmp_path / 'data.json'}", "--template.type=html",
               '--template.text={{ template "stackwatch.telegram.message" . }}')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("🔥 <b>FIRING: 2</b> <code>trading</code>\n")
    assert "is 2.5s (threshold 2s)" in proc.stdout and "failing 30% of requests" in proc.stdout


# ------------------------------------------------------------------------ end to end


class Alertmanager(Process):
    def __init__(self, tmp: Path, config: Path, port: int | None = None):
        def launch(port: int) -> None:
            Process.__init__(self, [require_binary("prometheus-alertmanager"), f"--config.file={config}",
                                    f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--cluster.listen-address=", "--log.level=warn"], tmp / "alertmanager.log")

        self._start_on_a_port("alertmanager", launch, lambda: http_get(self.base + "/-/ready")[0] == 200, 30, port)

    def alerts(self) -> list[dict[str, Any]]:
        return json.loads(http_get(self.base + "/api/v2/alerts")[2])


def test_alert_delivery_end_to_end(servers, tmp_path, record_property):
    FLAKY_MODE["mode"] = "ok"
    receivers = Receivers()
    cfg = tmp_path / "stackwatch.yml"
    # interval 3s, timeout 2.5s: when /flaky hangs, every probe ends at 2.5 s, so the p95 is
    # above 2 s (StackwatchHighResponseTime) at the same time as the target is down.
    cfg.write_text(f"""defaults: {{interval: 3s, timeout: 2500ms}}
targets:
  - {{name: checkout, kind: http, url: "{servers.url('/flaky')}"}}
  - {{name: catalog, kind: http, url: "{servers.url('/health')}"}}
""")
    procs: list[Process] = []
    try:
        am = Alertmanager(tmp_path, render_alertmanager(tmp_path / "am.yml", receivers.telegram_api_url,
                                                        receivers.webhook_url, fast=True))
        procs.append(am)
        sw = Stackwatch(cfg, tmp_path)
        procs.append(sw)
        rules = [str(RULES / "stackwatch-recording.yml"), str(bundle.scaled_alert_rules(tmp_path / "alerts.yml"))]
        prom = Prometheus(tmp_path, [stackwatch_scrape(sw)], rule_files=rules, alertmanagers=[f"127.0.0.1:{am.port}"])
        procs.append(prom)
        prom.wait_for('stackwatch_probe_success{target="checkout"} == 1', timeout=30)

        # Bring the target down.
        FLAKY_MODE["mode"] = "slow"
        down_at = time.time()
        fired = wait_until(lambda: receivers.webhook_alerts("StackwatchTargetDown", "firing"), 60,
                           "StackwatchTargetDown at the webhook")
        webhook_delay = fired[0][0] - down_at
        alert = fired[0][1]
        assert alert["labels"]["target"] == "checkout" and alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["summary"] == "A monitored target fails its probe."
        assert alert["annotations"]["description"] == (
            "checkout (http probe) has failed every probe for at least 30s, reason timeout.")
        texts = wait_until(lambda: [t for t in receivers.telegram_texts() if "StackwatchTargetDown" in t], 30,
                           "StackwatchTargetDown on Telegram")
        telegram_delay = receivers.telegram[-1][0] - down_at
        assert texts[0].startswith("🔥 <b>FIRING: 1</b> <code>checkout</code> StackwatchTargetDown")
        assert "<code>checkout</code>" in texts[0] and "reason timeout" in texts[0]
        _, token, body = receivers.telegram[0]
        assert token == BOT_TOKEN and int(body["chat_id"]) == CHAT_ID and body["parse_mode"] == "HTML"

        # The latency alert of the same target fires in Prometheus but is inhibited.
        def inhibited() -> list[dict[str, Any]]:
            return [a for a in am.alerts() if a["labels"]["alertname"] == "StackwatchHighResponseTime"
                    and a["labels"].get("target") == "checkout" and a["status"]["state"] == "suppressed"
                    and a["status"]["inhibitedBy"]]
        wait_until(inhibited, 60, "StackwatchHighResponseTime suppressed by StackwatchTargetDown")
        time.sleep(3)  # two more group intervals: an inhibited alert must still not be sent
        assert receivers.webhook_alerts("StackwatchHighResponseTime", "firing") == []
        assert not [t for t in receivers.telegram_texts() if "StackwatchHighResponseTime" in t]
        assert all(a["labels"].get("target") != "catalog" for _, p in receivers.webhook for a in p["alerts"])

        # Recovery sends a resolved notification.
        FLAKY_MODE["mode"] = "ok"
        up_at = time.time()
        resolved = wait_until(lambda: receivers.webhook_alerts("StackwatchTargetDown", "resolved"), 60,
                              "resolved StackwatchTargetDown at the webhook")
        resolve_delay = resolved[0][0] - up_at
        # The target's critical group says TargetDown resolved: a message of its own, or a line in
        # the group's next message (the latency alert it inhibited may fire in the same group
        # until its 5-minute window has passed).
        wait_until(lambda: [t for t in receivers.telegram_texts() if t.startswith("✅ <b>RESOLVED</b>")
                            or "✅ StackwatchTargetDown · <code>checkout</code> resolved" in t], 30,
                   "resolved message on Telegram")
        for name, value in (("webhook_delay_s", webhook_delay), ("telegram_delay_s", telegram_delay),
                            ("resolve_delay_s", resolve_delay)):
            record_property(name, round(value, 1))
        print(f"\ndelivery: webhook {webhook_delay:.1f}s, telegram {telegram_delay:.1f}s after the target went "
              f"down; resolved {resolve_delay:.1f}s after it recovered")
        # Probe interval 3s + for 1s + evaluation 1s + group_wait 1s, with slack for a busy machine.
        assert webhook_delay < 30 and resolve_delay < 30
    except AssertionError:
        for p in procs:
            print(f"--- {p.log_path.name}\n{p.log()[-3000:]}")
        print("--- webhook\n" + dump(receivers.webhook) + "\n--- telegram\n" + dump(receivers.telegram))
        raise
    finally:
        FLAKY_MODE["mode"] = "ok"
        for p in reversed(procs):
            p.stop()
        receivers.close()
