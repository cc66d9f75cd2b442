"""The status page, its JSON API (checked against docs/openapi.yaml) and its history from memory
and from Prometheus; the page rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from fake_algod import ADMIN, PAM_ASSET, FakeAlgorand, fake_algod, seed_000_state
from harness import Prometheus, Stackwatch, backfilled_tsdb, http_get, stackwatch_scrape, wait_until

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "c" * 64
SPEC = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())


def schema(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}


def check(doc: object, name: str) -> None:
    jsonschema.validate(doc, schema(name), cls=jsonschema.Draft202012Validator)


@pytest.fixture(scope="module")
def algod():
    with fake_algod(TOKEN, seed_000_state) as a:
        yield a


def config(tmp: Path, servers, algod: FakeAlgorand) -> Path:
    cfg = tmp / "status.yml"
    cfg.write_text(f"""defaults: {{interval: 500ms, timeout: 400ms}}
targets:
  - {{name: web, kind: http, url: "{servers.url('/health')}", labels: {{team: shop}}}}
  - {{name: api-refused, kind: http, url: "http://127.0.0.1:{servers.closed_port}/"}}
  - {{name: health-check, kind: http, url: "{servers.url('/degraded')}", assertions: ["$.status == healthy"]}}
  - name: chain
    kind: algorand
    algod_url: {algod.algod_url}
    algod_token: "${{STATUS_ALGOD_TOKEN}}"
    accounts: [{{alias: admin, address: {ADMIN}, min_balance_algo: 1}}]
    assets: [{{alias: token, id: {PAM_ASSET}, creator: {ADMIN}}}]
""")
    return cfg


def api(sw: Stackwatch, path: str) -> tuple[int, dict]:
    status, _, body = http_get(sw.base + path)
    return status, json.loads(body)


def test_api_states_uptime_and_history_from_memory(servers, algod, tmp_path):
    sw = Stackwatch(config(tmp_path, servers, algod), tmp_path, env={"STATUS_ALGOD_TOKEN": TOKEN})
    try:
        def settled() -> dict | None:
            _, doc = api(sw, "/api/v1/targets")
            states = {t["name"]: t["state"] for t in doc["targets"]}
            return doc if states == {"web": "up", "api-refused": "down", "chain": "degraded",
                                     "health-check": "down"} else None

        doc = wait_until(settled, 20, "every target's state")
        check(doc, "TargetList")
        by = {t["name"]: t for t in doc["targets"]}
        assert by["web"]["labels"] == {"team": "shop"} and by["web"]["uptime"]["24h"] == 1.0
        assert by["api-refused"]["uptime"]["24h"] == 0.0
        assert by["api-refused"]["reason"].startswith("connection_refused")
        assert 'algorand_asset_exists{asset="token"}' in by["chain"]["failing_checks"]
        assert 'algorand_account_above_floor{account="admin"}' in by["chain"]["failing_checks"]
        assert {t["history_source"] for t in doc["targets"]} == {"memory"}
        # One definition: a failed assertion fails the probe (probe_success 0, TargetDown): down,
        # with the assertion as the reason; degraded is a probe that works with checks that fail.
        assert by["health-check"]["reason"] == "assertion: $.status (degraded) == healthy"
        assert doc["total"] == 4 and doc["next_offset"] is None and doc["history_error"] is None
        # Pages of the API: limit and offset, in config order.
        _, first = api(sw, "/api/v1/targets?limit=3")
        _, rest = api(sw, f"/api/v1/targets?limit=3&offset={first['next_offset']}")
        assert [t["name"] for t in first["targets"] + rest["targets"]] == ["web", "api-refused", "health-check", "chain"]
        assert first["next_offset"] == 3 and rest["next_offset"] is None
        for bad in ("limit=0", "limit=5001", "offset=-1", "limit=x"):
            status, err = api(sw, f"/api/v1/targets?{bad}")
            assert status == 400 and ("limit" in err["error"] or "offset" in err["error"])
            check(err, "Error")

        def probed_twice() -> dict | None:
            h = api(sw, "/api/v1/targets/web/history?range=24h")[1]
            return h if sum(b["probes"] for b in h["buckets"]) >= 2 else None

        hist = wait_until(probed_twice, 10, "two probes of web")
        check(hist, "History")
        assert len(hist["buckets"]) == 96 and hist["buckets"][-1]["uptime"] == 1.0
        assert sum(b["probes"] for b in hist["buckets"][-2:]) >= 2  # (they may straddle a quarter-hour)
        assert all(b["uptime"] is None for b in hist["buckets"][:-2])  # nothing before the start
        status, hist = api(sw, "/api/v1/targets/api-refused/history?range=90d")
        check(hist, "History")
        assert len(hist["buckets"]) == 90 and hist["uptime"] == 0.0
        status, err = api(sw, "/api/v1/targets/web/history?range=7y")
        assert status == 400 and "range must be 24h or 90d" in err["error"]
        check(err, "Error")
        status, err = api(sw, "/api/v1/targets/nope/history")
        assert status == 404
        check(err, "Error")
        # The last probes and the latency quantiles the alerts read.
        status, probes = api(sw, "/api/v1/targets/api-refused/probes")
        assert status == 200
        check(probes, "Probes")
        assert len(probes["probes"]) >= 2 and not any(p["success"] for p in probes["probes"])
        durations = sorted(p["duration_seconds"] for p in probes["probes"])
        assert probes["quantiles"]["0.99"] <= durations[-1] and probes["quantiles"]["0.5"] in durations
        status, err = api(sw, "/api/v1/targets/nope/probes")
        assert status == 404 and "unknown target" in err["error"]

        page = http_get(sw.base + "/")[2].decode()
        assert "History since stackwatch started (in memory)" in page
        targets_table, _, incidents = page.partition("<h2>Incidents, last 24 hours</h2>")
        rows = __import__("re").findall(r"<tr class='\w+'>.*?</tr>", targets_table)
        assert len(rows) == 4 and max(len(r.encode()) for r in rows) <= 2048, [len(r) for r in rows]
        # The incident list: the two failing targets, ongoing, with their reasons
        ongoing = __import__("re").findall(r"<tr class='down'><td><a href='targets/([\w-]+)'>.*?ongoing since "
                                           r".*?<td class='reason'>(\w+):", incidents)
        assert sorted(ongoing) == [("api-refused", "connection_refused"), ("health-check", "assertion")], incidents
        assert '<meta http-equiv="refresh"' in page and "<script" not in page
        detail = wait_until(lambda: (lambda d: "<polyline" in d and d)(http_get(sw.base + "/targets/chain")[2].decode()),
                            10, "a latency chart")
        assert "degraded" in detail and "Failing checks" in detail and "<polyline" in detail
        assert http_get(sw.base + "/targets/nope")[0] == 404
    finally:
        sw.stop()


def test_history_comes_from_prometheus_and_survives_a_restart(servers, algod, tmp_path):
    """One stackwatch is scraped by Prometheus; a second one, started later with --prometheus.url
    and no history of its own, shows the first one's history."""
    cfg = config(tmp_path, servers, algod)
    first = Stackwatch(cfg, tmp_path, env={"STATUS_ALGOD_TOKEN": TOKEN})
    prom = Prometheus(tmp_path, [stackwatch_scrape(first)])
    second = None
    try:
        prom.wait_for('stackwatch_probe_success{target="api-refused"} == 0', timeout=30)
        prom.wait_for('count_over_time(stackwatch_probe_success{target="web"}[1m]) >= 3', timeout=30)
        second = Stackwatch(cfg, tmp_path, env={"STATUS_ALGOD_TOKEN": TOKEN}, extra=["--prometheus.url", prom.base])
        status, doc = api(second, "/api/v1/targets")
        check(doc, "TargetList")
        by = {t["name"]: t for t in doc["targets"]}
        assert by["web"]["history_source"] == "prometheus"
        assert by["web"]["uptime"]["24h"] == 1.0 and by["api-refused"]["uptime"]["24h"] == 0.0
        status, hist = api(second, "/api/v1/targets/api-refused/history?range=24h")
        check(hist, "History")
        assert hist["source"] == "prometheus" and hist["buckets"][-1]["uptime"] == 0.0
        page = http_get(second.base + "/")[2].decode()
        assert "History from Prometheus." in page
        # Incidents from Prometheus too: the second exporter has seen few probes of its own, the
        # list comes from stackwatch_probe_failure_reason's history (the page says so)
        incidents = page.partition("<h2>Incidents, last 24 hours</h2>")[2]
        assert "from Prometheus, one point a minute" in incidents
        assert "<a href='targets/api-refused'>api-refused</a>" in incidents and "connection_refused" in incidents
        # Prometheus gone: once its cached answers (30 s) expire, the page falls back to memory and says why.
        prom.stop()
        page = wait_until(lambda: (lambda p: "Prometheus unavailable" in p and p)(
            http_get(second.base + "/", timeout=15)[2].decode()), 45, "the fallback to memory")
        assert "History since stackwatch started (in memory)" in page
    finally:
        if second is not None:
            second.stop()
        prom.stop()
        first.stop()


def test_p95_over_an_hour_from_prometheus_on_a_targets_page(servers, algod, tmp_path):
    """An hour of stackwatch_probe_recent_duration_seconds written into Prometheus's TSDB with
    promtool (15 s apart, rising from 100 ms to 2.5 s): the target's page draws it with time
    axes and the 2 s goal line when asked for ?latency=1h."""
    now = int(time.time()) // 15 * 15
    lines = ["# HELP stackwatch_probe_recent_duration_seconds x", "# TYPE stackwatch_probe_recent_duration_seconds gauge"]
    for k, ts in enumerate(range(now - 3600, now - 14, 15)):
        lines.append(f'stackwatch_probe_recent_duration_seconds{{job="stackwatch",instance="sw:9938",target="web",'
                     f'kind="http",quantile="0.95"}} {0.1 + 2.4 * k / 240:.3f} {ts}')
    prom = Prometheus(tmp_path, [], data_dir=backfilled_tsdb(tmp_path, lines))
    sw = None
    try:
        sw = Stackwatch(config(tmp_path, servers, algod), tmp_path, env={"STATUS_ALGOD_TOKEN": TOKEN},
                        extra=["--prometheus.url", prom.base])

        def chart() -> str | None:
            d = http_get(sw.base + "/targets/web?latency=1h")[2].decode()
            return d if "<polyline" in d and "Latency, p95 over the last 1h" in d else None

        detail = wait_until(chart, 20, "the p95 chart from Prometheus")
        svg = detail.partition("Latency, p95 over the last 1h")[2].partition("</svg>")[0]
        assert len(re.search(r'points="([^"]+)"', svg).group(1).split()) >= 200  # an hour at 15 s
        assert ">goal 2 s</text>" in svg and ">2.5 s</text>" in svg  # the goal line; the axis up to the top
        assert len(re.findall(r'font-size="11" text-anchor="(?:start|middle|end)">\d\d:\d\d</text>', svg)) == 5
    finally:
        if sw is not None:
            sw.stop()
        prom.stop()


def test_status_page_in_headless_chromium(servers, algod, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing (Debian package chromium; tests/run.sh installs it)"
    sw = Stackwatch(config(tmp_path, servers, algod), tmp_path, env={"STATUS_ALGOD_TOKEN": TOKEN})
    try:
        wait_until(lambda: '"degraded"' in http_get(sw.base + "/api/v1/targets")[2].decode(), 20, "settled")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,700"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", sw.base + "/"], capture_output=True, text=True,
                             timeout=90).stdout
        rows = sorted(__import__("re").findall(r"<tr class=\"(\w+)\"><td><a [^>]*>([\w-]+)</a>",
                                               dom.partition("Incidents, last 24 hours")[0]))
        assert rows == [("degraded", "chain"), ("down", "api-refused"), ("down", "health-check"), ("up", "web")], \
            dom[:2000]
        # Screenshots at desktop and phone width, of the list and of a target's page; written to
        # docs/ as well when STACKWATCH_SCREENSHOTS_TO_DOCS=1 (how the README's pictures are made).
        shots = {"status-page.png": ("/", 1400), "status-page-phone.png": ("/", 400),
                 "target-page.png": ("/targets/api-refused", 1400), "target-page-phone.png": ("/targets/api-refused", 400)}
        for name, (path, width) in shots.items():
            shot = tmp_path / name
            size = [f for f in flags if not f.startswith("--window-size")] + [f"--window-size={width},1100"]
            subprocess.run([chromium, *size, "--hide-scrollbars", f"--screenshot={shot}", sw.base + path],
                           capture_output=True, timeout=90)
            assert shot.exists() and shot.stat().st_size > 10_000, name
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert int.from_bytes(shot.read_bytes()[16:20], "big") == width  # PNG IHDR width
            if os.environ.get("STACKWATCH_SCREENSHOTS_TO_DOCS") == "1":
                shutil.copy(shot, ROOT / "docs" / name)
    finally:
        sw.stop()


def test_failing_checks_in_words():
    from stackwatch.probes import algorand, consistency, http, sql  # noqa: F401 -- their families
    from stackwatch.probes.base import check_words

    assert check_words('algorand_asset_exists{asset="pam-token"}') == \
        "asset pam-token does not exist on this network (never created, or destroyed)"
    assert check_words('algorand_account_above_floor{account="admin"}') == "account admin is below its balance floor"
    assert check_words('consistency_invariant_violated{source="deployed",invariant="active <= total"}') == \
        "source deployed breaks active <= total"
    assert check_words('http_assertion_success{assertion="$.status == \\"ok\\""}') == \
        'the assertion $.status == "ok" does not hold'
    assert check_words("sql_schema_ok") == "a schema expectation does not hold"
    assert check_words('some_custom_metric{x="1"}') == 'some_custom_metric{x="1"}'  # no words: the name


def test_a_flapping_target_is_degraded_not_up():
    """The state reflects the recent window, not the last probe alone: 30 % of the last 5 minutes'
    probes failing is degraded (with the ratio) even when the last one passed."""
    import time as _time

    from stackwatch.history import History
    from stackwatch.kinds import parse_config
    from stackwatch.probes.base import ProbeResult
    from stackwatch.statuspage import target_state
    from stackwatch.store import Outcome, TargetState

    t = parse_config("targets:\n  - {name: shop, kind: http, url: 'http://x/', interval: 10s}\n").targets[0]
    now = _time.time()

    def state_after(outcomes: list[bool]) -> tuple[str, str]:
        st = TargetState(t, "")
        st.history = History()
        for i, ok in enumerate(outcomes):
            at = now - (len(outcomes) - i) * 10
            st.history.add(at, ok, 0.1)
            r = ProbeResult(success=ok, duration=0.1)
            r.finished_at = at
            st.result = Outcome.of(r)
        return target_state(st, now)[:2]

    flapping = [True, True, False] * 7 + [True]  # every third probe fails, the last one passed
    status, reason = state_after(flapping)
    assert (status, reason) == ("degraded", "7 of the last 22 probes failed in 5 min (32 %, over 5 %)")
    assert state_after([True] * 30) == ("up", "")
    assert state_after([False] + [True] * 3)[0] == "up"  # too few probes in the window to judge
    old_failures = [False] * 10 + [True] * 30  # failures older than 5 minutes no longer count
    assert state_after(old_failures) == ("up", "")
