"""`stackwatch report` against a live Prometheus fed by stackwatch: its figures equal direct
PromQL, every section is there, and it reaches a (stand-in) Telegram within the size limit."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_algod import ADMIN, PAM_ASSET, FakeAlgorand, seed_000_state
from harness import Prometheus, Stackwatch, stackwatch_scrape
from receivers import Receivers
from stackwatch import bundle
from stackwatch.report import telegram_chunks

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "d" * 64


@pytest.fixture(scope="module")
def live(servers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    algod = FakeAlgorand(TOKEN)
    algod.reset(seed_000_state(TOKEN))
    cfg = tmp / "report.yml"
    cfg.write_text(f"""defaults: {{interval: 500ms, timeout: 400ms}}
targets:
  - {{name: web, kind: http, url: "{servers.url('/health')}", labels: {{service: shop, feature: web}}}}
  - {{name: api, kind: http, url: "http://127.0.0.1:{servers.closed_port}/", labels: {{service: shop, feature: api}}}}
  - name: chain
    kind: algorand
    algod_url: {algod.algod_url}
    algod_token: "${{REPORT_ALGOD_TOKEN}}"
    labels: {{service: rewards, feature: token}}
    accounts: [{{alias: admin, address: {ADMIN}, min_balance_algo: 1}}]
    assets: [{{alias: token, id: {PAM_ASSET}, creator: {ADMIN}}}]
""")
    sw = Stackwatch(cfg, tmp, env={"REPORT_ALGOD_TOKEN": TOKEN})
    rules = [str(ROOT / "prometheus" / "rules" / "stackwatch-recording.yml"),
             str(bundle.scaled_alert_rules(tmp / "alerts.yml", divisor=30))]
    prom = Prometheus(tmp, [stackwatch_scrape(sw)], rule_files=rules)
    prom.wait_for('ALERTS{alertname="StackwatchTargetDown",alertstate="firing",target="api"}', timeout=60)
    time.sleep(3)
    yield prom
    prom.stop()
    sw.stop()
    algod.close()


def report(prom: Prometheus, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "report", "--prometheus", prom.base, "--since", "2m",
                           *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_markdown_report_matches_promql(live):
    prom = live
    text = report(prom, "--figure", "probes run=stackwatch_probes_total")
    direct = {r["metric"]["target"]: float(r["value"][1])
              for r in prom.query("avg by (target) (avg_over_time(stackwatch_probe_success[2m]))")}
    for target, value in direct.items():
        m = re.search(rf"^\| {target} \| ([0-9.]+)% \|", text, re.M)
        assert m, target
        assert abs(float(m.group(1)) / 100 - value) < 0.02, (target, m.group(1), value)
    assert "**Overall: DOWN**: 1 up, 1 degraded, 1 down of 3 services." in text
    assert "- DOWN **api** (http): connection_refused" in text
    assert "- DEGRADED **chain** (algorand): " in text and "asset token does not exist" in text
    assert "account admin is below its floor" in text
    assert re.search(r"- \*\*api\*\* down from .* to ongoing", text)
    assert re.search(r"- StackwatchTargetDown \(critical\) on api: first", text)
    assert "## Urgent actions" in text and "StackwatchTargetDown on api" in text
    # the integration matrix from the service/feature labels
    assert re.search(r"^\| shop \| down \|  \| up \|$", text, re.M), text
    # the business figure equals the same PromQL, within the probes run meanwhile
    now = sum(float(r["value"][1]) for r in prom.query("stackwatch_probes_total"))
    m = re.search(r"^\| probes run \| ([0-9.e+]+) \|", text, re.M)
    assert m and abs(float(m.group(1)) - now) <= 30, (m and m.group(1), now)
    assert "## Latency (goals: p50 < 500 ms, p95 < 2 s)" in text and re.search(r"^\| web \| \d+ ms \| \d+ ms \| met \|", text, re.M)


def test_html_report_and_telegram_delivery(live, tmp_path):
    prom = live
    page = report(prom, "--format", "html")
    assert page.startswith("<!doctype html>") and "<table" in page and "<h2>Incidents" in page
    receivers = Receivers()
    try:
        token = tmp_path / "bot"
        token.write_text("777:report-token\n")
        report(prom, "--send", "telegram", "--telegram-chat-id", "-100123", "--telegram-token-file", str(token),
               "--telegram-api-url", receivers.telegram_api_url)
        texts = receivers.telegram_texts()
        assert texts and all(0 < len(t) <= 4096 for t in texts)
        assert "Overall: DOWN" in "".join(texts)
    finally:
        receivers.close()


def test_long_reports_are_split_within_the_telegram_limit():
    text = "\n".join(f"- line {i} " + "x" * 80 for i in range(400)) + "\n" + "y" * 9000
    chunks = telegram_chunks(text)
    assert len(chunks) > 5 and all(len(c) <= 4096 for c in chunks)
    assert "".join(chunks).count("- line ") == 400
