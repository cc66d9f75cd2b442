"""Maintenance windows as code: declared in the config, they become Alertmanager silences, show
on the status page and in the API, and are left out of the report's availability."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from harness import Prometheus, Stackwatch, http_get, stackwatch_scrape, wait_until
from stackwatch import bundle
from stackwatch.config import ConfigError
from stackwatch.kinds import parse_config
from test_alerting import Alertmanager


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def config_text(servers, window: bool) -> str:
    now = datetime.now(timezone.utc)
    maint = (f"""maintenance:
  - name: db-upgrade
    targets: [api]
    start: {iso(now - timedelta(hours=1))}
    end: {iso(now + timedelta(hours=1))}
    comment: upgrading the database
""" if window else "")
    return maint + f"""defaults: {{interval: 500ms, timeout: 400ms}}
targets:
  - {{name: web, kind: http, url: "{servers.url('/health')}"}}
  - {{name: api, kind: http, url: "http://127.0.0.1:{servers.closed_port}/"}}
"""


def test_windows_are_validated():
    with pytest.raises(ConfigError) as info:
        parse_config("""maintenance:
  - {name: w, targets: [nope], start: 2026-12-01T00:00:00Z, end: 2026-12-01T01:00:00Z}
  - {name: v, targets: [a], start: 2026-12-01T02:00:00Z, end: 2026-12-01T01:00:00Z}
  - {name: u, targets: [a], start: "2026-12-01 02:00", end: 2026-12-01T03:00:00Z}
targets:
  - {name: a, kind: http, url: "http://x/"}
""")
    text = info.value.render()
    assert "maintenance[1] (line 3, column 5): end must be after start" in text
    assert 'maintenance[2].start (line 4, column 29): give the time zone (Z or +01:00)' in text


def silences(am: Alertmanager) -> list[dict]:
    doc = json.loads(http_get(am.base + "/api/v2/silences")[2])
    return [s for s in doc if s["createdBy"] == "stackwatch" and s["status"]["state"] == "active"]


def test_window_silences_shows_and_is_excluded_from_the_report(servers, tmp_path):
    running = contextlib.ExitStack()  # stops what started, even when a later start fails
    am = Alertmanager(tmp_path, bundle.render_alertmanager(tmp_path / "am.yml", "1:x", email=False))
    running.callback(am.stop)
    cfg = tmp_path / "maint.yml"
    cfg.write_text(config_text(servers, window=True))
    try:
        sw = Stackwatch(cfg, tmp_path, extra=["--alertmanager.url", am.base, "--web.enable-lifecycle"])
        running.callback(sw.stop)
        prom = Prometheus(tmp_path, [stackwatch_scrape(sw)])
        running.callback(prom.stop)
        active = wait_until(lambda: silences(am), 20, "the maintenance silence")
        assert len(active) == 1
        assert active[0]["comment"] == "stackwatch maintenance db-upgrade: upgrading the database"
        assert [(m["name"], m["value"], m["isRegex"]) for m in active[0]["matchers"]] == [("target", "api", True)]
        # A reload with the same window keeps that silence (no duplicate).
        req = urllib.request.Request(sw.base + "/-/reload", data=b"", method="POST")
        assert urllib.request.urlopen(req, timeout=30).status == 200
        time.sleep(1)
        assert [s["id"] for s in silences(am)] == [active[0]["id"]]

        wait_until(lambda: "[maintenance db-upgrade until" in http_get(sw.base + "/")[2].decode(), 10, "status page")
        doc = json.loads(http_get(sw.base + "/api/v1/targets")[2])
        assert {t["name"]: t["maintenance"] for t in doc["targets"]} == {"web": None, "api": "db-upgrade"}

        prom.wait_for('count_over_time(stackwatch_probe_success{target="api"}[1m]) >= 3', timeout=30)
        out = subprocess.run([sys.executable, "-m", "stackwatch", "report", "--prometheus", prom.base, "--since", "5m",
                              "--config.file", str(cfg)], capture_output=True, text=True, timeout=120).stdout
        assert "Maintenance windows (not counted as downtime):" in out and "- db-upgrade (" in out
        rows = [line for line in out.splitlines() if re.match(r"\| api( \(maintenance excluded\))? \| [0-9.]+% \|", line)]
        assert rows == [], rows  # every sample of api lies in the window: no availability to count
        assert "| web | 100.00% |" in out

        # The window removed from the config: its silence is expired at the reload.
        cfg.write_text(config_text(servers, window=False))
        assert urllib.request.urlopen(urllib.request.Request(sw.base + "/-/reload", data=b"", method="POST"),
                                      timeout=30).status == 200
        wait_until(lambda: silences(am) == [], 20, "the silence expired")
    finally:
        running.close()
