"""The command line: every subcommand answers --help with its usage, exit 0 and nothing written;
the main help lists every subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest
from stackwatch.cli import SUBCOMMANDS

SUBS = [name.split()[0] for name in SUBCOMMANDS]


def run(args: list[str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackwatch", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_main_help_lists_every_subcommand(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    for name in SUBS:
        assert f"stackwatch {name}" in out.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sub", SUBS)
def test_subcommand_help_has_no_side_effects(tmp_path, sub):
    out = run([sub, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: stackwatch {sub}")
    assert list(tmp_path.iterdir()) == [], "--help wrote files"  # bundle --help once wrote a folder named --help


def test_subcommand_usage_errors_are_located(tmp_path):
    out = run(["bundle"], tmp_path)
    assert out.returncode == 2 and "usage: stackwatch bundle" in out.stderr and "dir" in out.stderr
    out = run(["check-config"], tmp_path)
    assert out.returncode == 2 and "usage: stackwatch check-config" in out.stderr


def test_demo_on_a_busy_port_says_so_before_any_banner(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run(["demo", "--web.listen-address", f"127.0.0.1:{port}"], tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""  # no URL banner for a demo that is not running
    assert out.stderr.strip() == (f"stackwatch demo: cannot listen on 127.0.0.1:{port} (--web.listen-address): "
                                  "Address already in use")


def test_version_matches_the_package_and_the_changelog():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    out = run(["--version"], root)
    assert out.returncode == 0 and out.stdout.strip() == f"stackwatch {version}"
    changelog = (root / "CHANGELOG.md").read_text()
    assert changelog.split("\n## ", 1)[1].startswith(f"{version} ("), "the newest CHANGELOG entry is not this version"


def test_check_config_warns_about_a_consistency_target_without_invariants(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("""targets:
  - name: counts
    kind: consistency
    fields: [total]
    sources:
      - {name: a, file: {path: /a.json, fields: {total: $.t}}}
      - {name: b, file: {path: /b.json, fields: {total: $.t}}}
  - name: checked
    kind: consistency
    fields: [total]
    invariants: ["total >= 0"]
    sources:
      - {name: a, file: {path: /a.json, fields: {total: $.t}}}
      - {name: b, file: {path: /b.json, fields: {total: $.t}}}
""")
    out = run(["check-config", str(cfg)], tmp_path)
    assert out.returncode == 0  # valid: a warning, not an error
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "targets[0] (counts): no invariants" in warnings[0]
