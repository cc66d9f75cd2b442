"""Prometheus and Alertmanager that drip, hang, send 100 MB, answer in the wrong shape, redirect
in a loop or fail, beside a healthy exporter: every page and API call still answers, says why
history and alerts are unavailable, and /metrics and probing go on.  An Alertmanager that is
down when stackwatch starts gets its maintenance silences once it is up.

The misbehaving servers run in a child process (tests/hostile_remote.py); the Alertmanager of
the last test is Debian's real one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import Stackwatch, http_get, wait_until
from stackwatch import bundle
from targets import free_port
from test_alerting import Alertmanager
from expo import find

PAGE_DEADLINE = 10.0
"""A page waits at most 1.5 s for a remote (statuspage.WAIT); 10 s leaves a loaded machine room."""

# What the page says once the remote's failure is known, by mode.
WHY = {
    "drip": "no complete answer within 4s",
    "hang": "no complete answer within 4s",
    "huge": "over the limit of",
    "shape": "unexpected answer: data.result[0].metric",
    "redirect": "more than 3 redirects",
    "error": "HTTP 503",
}


@pytest.fixture(scope="module")
def remotes():
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hostile_remote.py"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("tests/hostile_remote.py did not start")
        yield json.loads(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def timed_get(url: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    status, _, body = http_get(url, timeout=30)
    return status, body, time.monotonic() - started


def probe_runs(sw: Stackwatch, target: str) -> float:
    return sum(v for _, v in find(sw.metrics(), "stackwatch_probes_total", target=target))


@pytest.mark.parametrize("mode", list(WHY))
def test_pages_answer_and_say_why_when_remotes_misbehave(servers, remotes, tmp_path, mode):
    url = f"http://127.0.0.1:{remotes[mode]}"
    cfg = tmp_path / "sw.yml"
    cfg.write_text(f"""defaults: {{interval: 500ms, timeout: 400ms}}
targets:
  - {{name: web, kind: http, url: "{servers.url('/health')}"}}
  - {{name: api, kind: http, url: "http://127.0.0.1:{servers.closed_port}/"}}
""")
    sw = Stackwatch(cfg, tmp_path, extra=["--prometheus.url", url, "--alertmanager.url", url])
    scrapes: list[tuple[int, float]] = []
    stop = threading.Event()

    def scrape() -> None:  # /metrics all along, as Prometheus would
        while not stop.is_set():
            status, _, took = timed_get(sw.base + "/metrics")
            scrapes.append((status, took))
            stop.wait(0.5)

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        wait_until(lambda: probe_runs(sw, "web") >= 2, 15, "first probes")
        scraper.start()
        runs_before = probe_runs(sw, "web")
        for round_ in range(2):
            for path in ("/", "/targets/web", "/api/v1/targets", "/api/v1/targets/web/history?range=24h"):
                status, body, took = timed_get(sw.base + path)
                assert status == 200, (path, status, body[:300])
                assert took < PAGE_DEADLINE, (path, took)
            if round_ == 0:
                time.sleep(5)  # the background fetches end (4 s deadline) and their failure is known
        page = http_get(sw.base + "/")[2].decode()
        assert "History since stackwatch started (in memory)" in page
        assert "Prometheus unavailable" in page and WHY[mode] in page, page[:3000]
        assert "Alerts unavailable" in page and WHY[mode].split(":")[0] in page
        doc = json.loads(http_get(sw.base + "/api/v1/targets")[2])
        assert {t["history_source"] for t in doc["targets"]} == {"memory"}
        assert WHY[mode] in doc["history_error"]
        hist = json.loads(http_get(sw.base + "/api/v1/targets/web/history")[2])
        assert hist["source"] == "memory" and WHY[mode] in hist["error"]
        # Probing and scraping went on meanwhile.
        assert probe_runs(sw, "web") >= runs_before + 10
        stop.set()
        scraper.join(10)
        assert scrapes and all(status == 200 for status, _ in scrapes), scrapes
        assert max(took for _, took in scrapes) < PAGE_DEADLINE, scrapes
        assert "Traceback" not in sw.log()
    finally:
        stop.set()
        sw.stop()


@pytest.mark.parametrize("mode", ["shape", "error", "huge"])
def test_report_gives_one_line_and_an_exit_code(remotes, mode):
    out = subprocess.run([sys.executable, "-m", "stackwatch", "report", "--prometheus",
                          f"http://127.0.0.1:{remotes[mode]}", "--since", "1h"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and WHY[mode] in lines[0], out.stderr


def test_silences_reach_an_alertmanager_that_was_down_at_start(servers, tmp_path):
    now = datetime.now(timezone.utc)
    port = free_port()
    cfg = tmp_path / "maint.yml"
    cfg.write_text(f"""maintenance:
  - name: upgrade
    targets: [api]
    start: {(now - timedelta(minutes=5)).strftime('%Y-%m-%dT%H:%M:%SZ')}
    end: {(now + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}
    comment: rolling upgrade
defaults: {{interval: 1s, timeout: 500ms}}
targets:
  - {{name: api, kind: http, url: "{servers.url('/health')}"}}
""")
    sw = Stackwatch(cfg, tmp_path, extra=["--alertmanager.url", f"http://127.0.0.1:{port}"],
                    env={"STACKWATCH_SILENCE_SYNC_EVERY": "4"})
    am = None
    try:
        wait_until(lambda: "cannot sync maintenance silences" in sw.log(), 15, "the failed first sync")
        am = Alertmanager(tmp_path, bundle.render_alertmanager(tmp_path / "am.yml", "1:x", email=False), port=port)
        # the retries back off 2, 4 s and are capped at the period (4 s here): one period and a margin
        found = wait_until(lambda: [s for s in json.loads(http_get(am.base + "/api/v2/silences")[2])
                                    if s["createdBy"] == "stackwatch" and s["status"]["state"] == "active"],
                           20, "the maintenance silence")
        assert len(found) == 1 and found[0]["comment"] == "stackwatch maintenance upgrade: rolling upgrade"
    finally:
        if am is not None:
            am.stop()
        sw.stop()


def test_reloads_against_a_dripping_alertmanager_leave_no_connections_behind(servers, remotes, tmp_path):
    """Silences are reconciled by one task with a deadline per call: reloads do not stack up
    calls, and no connection to a dripping Alertmanager outlives its deadline."""
    import os
    import signal as sig

    now = datetime.now(timezone.utc)
    port = remotes["drip"]
    cfg = tmp_path / "maint.yml"
    cfg.write_text(f"""maintenance:
  - name: upgrade
    targets: [api]
    start: {(now - timedelta(minutes=5)).strftime('%Y-%m-%dT%H:%M:%SZ')}
    end: {(now + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}
defaults: {{interval: 1s, timeout: 500ms}}
targets:
  - {{name: api, kind: http, url: "{servers.url('/health')}"}}
""")
    sw = Stackwatch(cfg, tmp_path, extra=["--alertmanager.url", f"http://127.0.0.1:{port}"],
                    env={"STACKWATCH_SILENCE_SYNC_EVERY": "2"})

    def connections_to_alertmanager() -> int:
        inodes = set()
        for fd in os.listdir(f"/proc/{sw.proc.pid}/fd"):
            try:
                link = os.readlink(f"/proc/{sw.proc.pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        n = 0
        for row in Path(f"/proc/{sw.proc.pid}/net/tcp").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) == port:
                n += 1
        return n

    try:
        for _ in range(12):
            sw.signal(sig.SIGHUP)
            time.sleep(0.5)
        time.sleep(5)  # past the 4 s deadline of any call started during the reloads
        assert connections_to_alertmanager() <= 1  # at most the one call in flight now
        assert "cannot sync maintenance silences" in sw.log()
        assert "no complete answer within 4s" in sw.log()
        assert "Traceback" not in sw.log()
    finally:
        sw.stop()
