"""Config loading: every invalid file gives its exact error; valid files load with defaults resolved."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from stackwatch.config import ConfigError, masked_dump
from stackwatch.durations import format_duration, parse_duration
from stackwatch.kinds import load_config, parse_config

DATA = Path(__file__).parent / "data"
INVALID = sorted(DATA.glob("invalid-*.yml"))
ENV = {"STACKWATCH_TEST_TOKEN": "tok-123456789"}


def expected_errors(path: Path) -> list[str]:
    """The '# error: ...' lines a test file starts with, in order."""
    lines = [ln.removeprefix("# error: ") for ln in path.read_text().splitlines() if ln.startswith("# error: ")]
    assert lines, f"{path.name} must start with '# error: <expected message>'"
    return lines


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_reports_exact_error(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert [str(p) for p in info.value.problems] == expected_errors(path)


def test_every_error_is_reported_not_just_the_first() -> None:
    text = """targets:
  - name: a
    kind: http
    url: http://x/
    timeout: fast
  - name: b
    kind: http
    url: http://y/
    interval: slow
    method: FETCH
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "multi.yml", env={})
    assert [str(p) for p in info.value.problems] == [
        'targets[0].timeout (line 5, column 5): expected a duration like 5s, got "fast"',
        'targets[1].interval (line 9, column 5): expected a duration like 5s, got "slow"',
        "targets[1].method (line 10, column 5): expected one of 'GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE' "
        "or 'OPTIONS', got \"FETCH\"",
    ]
    assert info.value.render().startswith("multi.yml: 3 errors\n  targets[0].timeout")


def test_valid_config_resolves_defaults_and_labels() -> None:
    config = load_config(DATA / "valid-full.yml", env=ENV)
    pam, esg, fast = config.targets
    assert (pam.interval, pam.timeout) == (30.0, 4.0)
    assert pam.labels == {"env": "prod", "team": "pam"}  # target labels override defaults
    assert (esg.interval, esg.timeout) == (60.0, 0.5)
    assert esg.body_size_limit == 64 * 1024
    # An inherited timeout longer than the target's own interval is clamped, not an error.
    assert (fast.interval, fast.timeout) == (2.0, 2.0)
    assert config.scheduler.max_concurrent_probes == 32
    assert config.summary().endswith("OK, 3 targets (3 http)")


def test_secrets_from_file_and_env_never_show_in_dumps(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("file-secret-value\n")
    text = f"""targets:
  - name: a
    kind: http
    url: http://x/
    basic_auth: {{username: admin, password_file: {secret_file}}}
    headers: {{X-Api-Key: "${{API_KEY}}"}}
  - name: b
    kind: http
    url: http://y/
    authorization: {{credentials: "${{TOKEN}}"}}
"""
    config = parse_config(text, env={"TOKEN": "env-secret-value", "API_KEY": "header-secret-value"})
    a, b = config.targets
    assert a.basic_auth.password.get_secret_value() == "file-secret-value"  # newline stripped
    assert b.authorization.credentials.get_secret_value() == "env-secret-value"
    dumped = masked_dump(a) + masked_dump(b) + repr(a) + repr(b)
    for secret in ("file-secret-value", "env-secret-value", "header-secret-value"):
        assert secret not in dumped
    assert "<secret>" in masked_dump(a)
    # The secrets, and the form a Basic Authorization header gives the password (masked in output too).
    assert set(a.secrets()) == {"file-secret-value", "header-secret-value",
                                base64.b64encode(b"admin:file-secret-value").decode()}


def test_error_messages_never_echo_secret_values() -> None:
    text = """targets:
  - name: a
    kind: http
    url: http://x/
    basic_auth: {username: admin, password: [not, a, string]}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert "not" not in str(info.value).split("password", 1)[1]


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("15s", 15), ("1m", 60), ("1m30s", 90), ("2h", 7200), ("1d", 86400)])
def test_prometheus_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["fast", "15", "", "1.5s", "s", 15, None])
def test_bad_durations_name_what_was_expected(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a duration like 5s"):
        parse_duration(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackwatch", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "STACKWATCH_TEST_TOKEN": "t0k3n-value"})


def test_check_config_cli_ok() -> None:
    proc = run_cli("check-config", str(DATA / "valid-full.yml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{DATA / 'valid-full.yml'}: OK, 3 targets (3 http)"


def test_check_config_cli_lists_errors_and_exits_1() -> None:
    path = DATA / "invalid-duration.yml"
    proc = run_cli("check-config", str(path))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"{path}: 1 error", *(f"  {e}" for e in expected_errors(path))]


def test_examples_are_valid() -> None:
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yml"))
    assert examples, "examples/ must hold at least one config"
    for path in examples:
        proc = run_cli("check-config", str(path))
        assert proc.returncode == 0, f"{path}: {proc.stderr}"
