"""README's "without Docker" steps, run as written, deliver a rendered, non-empty Telegram message.

The commands come from the README block between the `without-docker` markers.  The test runs the
two `stackwatch` lines as they are (in a temp folder, with a token file where they expect it),
adding only the address of the stand-in Telegram and webhook receivers; then it starts Debian's
Alertmanager exactly with the config those lines wrote, sends it an alert, and checks what the
receivers got.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from harness import wait_until
from receivers import Receivers, dump
from test_alerting import Alertmanager

ROOT = Path(__file__).resolve().parents[1]


def readme_steps() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- without-docker -->\n```sh\n(.*?)```\n<!-- /without-docker -->", text, re.S)
    assert block, "README lost its without-docker block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def test_without_docker_steps_deliver_a_rendered_telegram_message(tmp_path):
    steps = readme_steps()
    assert [s[0] for s in steps] == ["stackwatch", "stackwatch", "prometheus-alertmanager", "prometheus", "stackwatch"]
    (tmp_path / "telegram_bot_token").write_text("4242:documented-path-token\n")
    receivers = Receivers()
    am = None
    try:
        for step in steps[:2]:
            extra = ["--telegram-api-url", receivers.telegram_api_url, "--webhook-url", receivers.webhook_url] \
                if step[1] == "alertmanager-config" else []
            proc = subprocess.run([sys.executable, "-m", "stackwatch", *step[1:], *extra], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        config = tmp_path / steps[2][steps[2].index("--config.file") + 1]
        assert oct(config.stat().st_mode & 0o777) == "0o600"
        # The Prometheus step's config is the bundle's own and passes promtool.
        prom_cfg = tmp_path / steps[3][steps[3].index("--config.file") + 1]
        check = subprocess.run(["promtool", "check", "config", str(prom_cfg)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        am = Alertmanager(tmp_path, config)
        now = datetime.now(timezone.utc)
        alert = [{"labels": {"alertname": "StackwatchTargetDown", "severity": "critical", "condition": "target_down",
                             "target": "checkout", "kind": "http"},
                  "annotations": {"summary": "A monitored target fails its probe.",
                                  "description": "checkout (http probe) has failed every probe for at least 30s, "
                                                 "reason timeout.",
                                  "runbook_url": "https://example.org/runbook#stackwatchtargetdown"},
                  "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=5)).isoformat()}]
        req = urllib.request.Request(am.base + "/api/v2/alerts", data=json.dumps(alert).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=10).status == 200
        texts = wait_until(lambda: [t for t in receivers.telegram_texts() if "StackwatchTargetDown" in t], 60,
                           "the Telegram message")
        assert texts[0].strip(), "empty Telegram message"
        assert "<code>checkout</code>" in texts[0] and "reason timeout" in texts[0]
        assert all(body.get("text") for _, _, body in receivers.telegram)  # not one empty message was tried
        assert wait_until(lambda: receivers.webhook_alerts("StackwatchTargetDown", "firing"), 30, "the webhook")
    except AssertionError:
        if am is not None:
            print(am.log()[-3000:])
        print(dump(receivers.telegram))
        raise
    finally:
        if am is not None:
            am.stop()
        receivers.close()


def test_alertmanager_config_refuses_a_bundle_without_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "stackwatch", "bundle", "b"], cwd=tmp_path, check=True, capture_output=True)
    for tmpl in (tmp_path / "b" / "alertmanager" / "templates").glob("*.tmpl"):
        tmpl.unlink()
    (tmp_path / "tok").write_text("1:x")
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "alertmanager-config", "--bundle", "b",
                           "--bot-token-file", "tok", "--out", "am.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=os.environ)
    assert proc.returncode == 1 and "templates/*.tmpl" in proc.stderr
