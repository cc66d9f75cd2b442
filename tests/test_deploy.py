"""Deployment files: the systemd unit passes systemd-analyze and keeps its hardening."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "stackwatch.service"


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    script = Path(sys.executable).parent / "stackwatch"
    unit = tmp_path / "stackwatch.service"
    text = UNIT.read_text()
    # The unit names the usual install path; verify it against the script this checkout installed.
    unit.write_text(text.replace("/usr/local/bin/stackwatch", str(script)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "PrivateTmp=yes", "CapabilityBoundingSet=\n", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert setting in text, setting
    security = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                              timeout=60)
    level = re.search(r"Overall exposure level for stackwatch.service: ([0-9.]+)", security.stdout)
    assert level and float(level.group(1)) <= 2.0, security.stdout[-500:]
    # The listen address in the unit is loopback: the port is not exposed unless the operator chooses to.
    assert "--web.listen-address=127.0.0.1:" in text
