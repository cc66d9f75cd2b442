"""`stackwatch report` against a live Prometheus fed by stackwatch: its figures equal direct
PromQL, every section is there, and it reaches a (stand-in) Telegram within the size limit."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_algod import ADMIN, PAM_ASSET, fake_algod, seed_000_state
from harness import Prometheus, Stackwatch, backfilled_tsdb, stackwatch_scrape
from receivers import Receivers
from stackwatch import bundle
from stackwatch.report import telegram_chunks

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "d" * 64


@pytest.fixture(scope="module")
def live(servers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    with contextlib.ExitStack() as running:  # stops what started, even when a later start fails
        algod = running.enter_context(fake_algod(TOKEN, seed_000_state))
        yield from _live(servers, tmp, algod, running)


def _live(servers, tmp, algod, running):
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
    running.callback(sw.stop)
    rules = [str(ROOT / "prometheus" / "rules" / "stackwatch-recording.yml"),
             str(bundle.scaled_alert_rules(tmp / "alerts.yml", divisor=30))]
    prom = Prometheus(tmp, [stackwatch_scrape(sw)], rule_files=rules)
    running.callback(prom.stop)
    prom.wait_for('ALERTS{alertname="StackwatchTargetDown",alertstate="firing",target="api"}', timeout=60)
    time.sleep(3)
    yield prom


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
    # refused in a few ms every time: no latency to meet a goal with (not "met")
    assert "| api | n/a | n/a | MISSED (no successful probe) |" in text


def test_html_report_and_telegram_delivery(live, tmp_path):
    prom = live
    page = report(prom, "--format", "html")
    assert page.startswith("<!doctype html>") and "<table" in page and "<h2>Incidents" in page
    assert '<b style="color:#c62828">DOWN</b>' in page  # states in colour (api is down)
    # Inline SVG charts after their tables: availability per service with the SLO line (api at
    # 0 %: a red, empty bar), p95 per answering service against the 2 s goal (api: none)
    avail = page.partition("<h2>Availability")[2].partition("<h2>")[0]
    assert "<svg" in avail and "SLO 99.9 %" in avail
    bars = dict(re.findall(r'<rect [^>]*fill="(#\w+)"><title>([\w-]+):', avail)[i][::-1] for i in range(3))
    assert bars["api"] == "#c62828" and bars["web"] == "#2e7d32", bars
    latency = page.partition("<h2>Latency")[2].partition("<h2>")[0]
    assert "p95 goal 2 s" in latency and "<title>web:" in latency and "<title>api:" not in latency
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


def test_text_the_report_did_not_write_cannot_change_its_layout():
    """Target names, reasons, labels and alert annotations come from configs and alert rules: a
    newline, a pipe, a link or a script in them stays text in the markdown and the HTML."""
    import time as _time

    from stackwatch.report import Incident, Report, markdown, to_html

    evil_name = "api|x\n# Pwned"
    evil_reason = "[click](javascript:alert(1)) <script>alert(2)</script> **loud** | cell"
    now = _time.time()
    r = Report(since=3600, generated_at=now)
    r.states = {evil_name: "down", "ok_svc": "up"}
    r.kinds = {evil_name: "http", "ok_svc": "http"}
    r.reasons = {evil_name: evil_reason}
    r.availability = {evil_name: 0.5, "ok_svc": 1.0}
    r.incidents = [Incident(evil_name, now - 600, None, evil_reason)]
    r.urgent = [f"TargetDown on {evil_name}: {evil_reason}"]
    md = markdown(r)
    lines = md.splitlines()
    # one heading of ours, no injected one; table rows keep their three cells
    assert [line for line in lines if line.startswith("#")] == [line for line in lines if line.startswith(("# Health", "## "))]
    assert not any("Pwned" in line and line.lstrip().startswith("#") for line in lines)
    avail = [line for line in lines if line.startswith("| api") and "50.00%" in line]
    assert len(avail) == 1 and len(__import__("re").split(r"(?<!\\)\|", avail[0].strip()[1:-1])) == 3, avail
    assert "<script>" not in md and "](javascript:" not in md.replace("\\](javascript:", "")
    assert "ok_svc" in md  # plain names stay as they are
    page = to_html(r)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<h1>") == 1 and "javascript:alert(1)" in page and 'href="javascript' not in page
    assert "api|x # Pwned" in page  # the name, shown as text


def test_durations_and_budgets_read_as_people_write_them():
    from stackwatch.durations import human_duration
    from stackwatch.report import _budget

    assert [human_duration(s) for s in (0.4, 45, 86.4, 240, 3599, 3600, 7800, 86400, 97200)] == [
        "0 s", "45 s", "1 min", "4 min", "1 h", "1 h", "2 h 10 min", "1 d", "1 d 3 h"]
    assert _budget(0.25) == "25.0 % spent, 75.0 % left"
    assert _budget(33.333) == "exhausted (3333 % of it spent in this window)"
    assert _budget(None) == "n/a"


def test_incidents_at_scrape_resolution_from_backfilled_history(tmp_path):
    """Six hours of history written into Prometheus's TSDB with promtool (15 s scrapes): a 30 s
    outage and a 2-hour one are each found, starting and ending within one scrape interval."""
    now = int(time.time()) // 15 * 15
    end = now - 300  # the last sample five minutes ago
    start = end - 6 * 3600
    short_at, long_at = start + 2 * 3600, start + 3 * 3600
    lines = ["# HELP stackwatch_probe_success 1 if the last probe succeeded.", "# TYPE stackwatch_probe_success gauge"]
    for ts in range(start, end + 1, 15):
        down = {"shop": short_at <= ts < short_at + 30, "api": long_at <= ts < long_at + 7200, "web": False}
        for target, is_down in down.items():
            lines.append(f'stackwatch_probe_success{{job="stackwatch",instance="sw:9938",target="{target}",'
                         f'kind="http"}} {0 if is_down else 1} {ts}')
    prom = Prometheus(tmp_path, [], data_dir=backfilled_tsdb(tmp_path, lines))
    try:
        proc = subprocess.run([sys.executable, "-m", "stackwatch", "report", "--prometheus", prom.base, "--since",
                               "7h"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        from stackwatch.report import Prom, _incidents

        found = {i.target: i for i in _incidents(Prom(prom.base), now - 7 * 3600, now, {})}
    finally:
        prom.stop()
    assert set(found) == {"shop", "api"}, found
    assert abs(found["shop"].start - short_at) <= 15 and abs(found["shop"].duration(now) - 30) <= 15
    assert abs(found["api"].start - long_at) <= 15 and abs(found["api"].duration(now) - 7200) <= 15
    assert "shop" in proc.stdout and "api" in proc.stdout
    assert re.search(r"api\W.*2 h", proc.stdout) and re.search(r"shop\W.*30 s", proc.stdout), proc.stdout


def test_a_flapping_target_is_degraded_by_the_status_pages_definition(tmp_path):
    """Backfilled history (promtool): "flap" fails one probe in four and "rare" one in forty, and
    both passed their last probe.  The report calls "flap" degraded with its failure ratio, as the
    status page and the API do (more than 5 % of the last 5 minutes' probes), and "rare" up."""
    from stackwatch.report import Prom, build, markdown

    end = int(time.time()) // 15 * 15 - 60
    start = end - 1800
    fail_every = {"flap": 4, "rare": 40, "steady": 0}
    lines = []
    for metric, kind in (("stackwatch_probe_success", "gauge"), ("stackwatch_probes", "counter")):
        lines += [f"# HELP {metric} x", f"# TYPE {metric} {kind}"]
        for target, every in fail_every.items():
            ok = failed = 0
            for ts in range(start, end + 1, 15):
                for _ in range(4):  # four probes a scrape; the last one of each scrape passes
                    n = ok + failed
                    if every and n % every == every - 2:
                        failed += 1
                    else:
                        ok += 1
                base = f'job="stackwatch",instance="sw:9938",target="{target}",kind="http"'
                if kind == "gauge":
                    lines.append(f"{metric}{{{base}}} 1 {ts}")
                else:
                    lines.append(f'{metric}_total{{{base},result="success"}} {ok} {ts}')
                    lines.append(f'{metric}_total{{{base},result="failure"}} {failed} {ts}')
    prom = Prometheus(tmp_path, [], data_dir=backfilled_tsdb(tmp_path, lines))
    try:
        r = build(Prom(prom.base), 3600, now=end)
    finally:
        prom.stop()
    assert r.states == {"flap": "degraded", "rare": "up", "steady": "up"}, (r.states, r.checks)
    assert r.checks["flap"] == ["25 % of its probes failed in the last 5m (over 5 %)"]
    assert "- DEGRADED **flap** (http): 25 % of its probes failed in the last 5m (over 5 %)" in markdown(r)


def test_runbook_links_follow_runbook_url_and_only_those_are_links():
    from stackwatch.report import RULES_RUNBOOK, _decorate, _runbook

    moved = _runbook(RULES_RUNBOOK + "#stackwatchtargetdown", "https://wiki.example/ops/runbook.html")
    assert moved == "https://wiki.example/ops/runbook.html#stackwatchtargetdown"
    assert _runbook(RULES_RUNBOOK + "#x", None) == RULES_RUNBOOK + "#x"
    line = f"api is DOWN (runbook: {moved}); a label said (runbook: https://evil.example/#x)"
    out = _decorate(line, "https://wiki.example/ops/runbook.html")
    assert f'(<a href="{moved}">runbook</a>)' in out
    assert "https://evil.example/#x)" in out and 'href="https://evil' not in out
    assert '<b style="color:#c62828">DOWN</b>' in out
