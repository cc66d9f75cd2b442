"""Hostile config files: a fuzz of mutated valid configs, alias bombs and deep nesting.

Every outcome is a loaded config or a ConfigError whose every problem names a key path or a
line; never another exception.  Deterministic (derandomized), bounded, part of CI.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stackwatch.config import ConfigError
from stackwatch.loader import decode
from stackwatch.kinds import parse_config

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [
    (ROOT / "examples" / "stackwatch.yml").read_text(),
    (ROOT / "tests" / "data" / "valid-full.yml").read_text(),
    """defaults: &d {interval: 15s, timeout: 5s, labels: {env: prod}}
scheduler: {max_concurrent_probes: 8}
targets:
  - {name: db, kind: sql, url: "sqlite:////tmp/x.db", queries: [{name: n, sql: "SELECT 1 AS v", values: [v]}],
     schema: {tables: [{name: t, columns: [a, {name: b, type: int}]}]}}
  - name: chain
    kind: algorand
    algod_url: http://127.0.0.1:4001
    accounts: [{alias: admin, address: MM7ZDYCD4RD5CVUO5RO6NAA7K7S7T7REFYEVQJ5AGQWVB63G7JD66SDKBM, min_balance_algo: 1}]
  - name: counts
    kind: consistency
    fields: [total, active]
    invariants: ["active <= total"]
    tolerance: {absolute: 2}
    sources:
      - {name: a, http: {url: "http://x/", fields: {total: $.t, active: $.a}}}
      - {name: b, file: {path: /x.json, fields: {total: $.t}}}
""",
]
TOKENS = [":", "- ", "[", "]", "{", "}", "&a ", "*a", "*nope", "!!python/object:os.system ", "!!binary ", "\t",
          "9" * 400, "${X}", "${UNSET}", "$$", "<<: *a\n", "'", '"', "\n  - ", "null", "~", "1e999", "-1", "0x1F",
          "\u00ff", "\x00", "\r", "---\n", "...\n", "? ", "%YAML 1.1\n", "|\n", "  ", "#", "http://u:p@h/",
          "10000000000000000000000s", "-5s", "1MiB", "99999999999999999999999GiB"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "dup", "swap"]))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)):]
        else:
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "dup":
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_configs_load_or_fail_with_located_errors(text: str) -> None:
    try:
        parse_config(text, "fuzz.yml", env={"X": "5s"})
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.path or p.line, f"an error names neither a key path nor a line: {p}"
            assert "Traceback" not in p.message


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_fail_with_located_errors(raw: bytes) -> None:
    try:
        parse_config(decode(b"targets:\n  - " + raw, "fuzz.yml"), "fuzz.yml", env={})
    except ConfigError as exc:
        assert all(p.path or p.line for p in exc.problems), exc.render()


def _load_in_subprocess(tmp_path: Path, text: str) -> tuple[str, float, int]:
    """check-config in a child process: (its stderr, wall seconds, peak RSS in MB)."""
    cfg = tmp_path / "hostile.yml"
    cfg.write_text(text)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    took = time.monotonic() - started
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) // 1024
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    return proc.stderr, took, peak


def test_alias_bomb_is_refused_fast_and_small(tmp_path):
    levels = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(levels) + "\ntargets: *j\n"
    assert len(bomb) < 500
    err, took, peak = _load_in_subprocess(tmp_path, bomb)
    assert "expands to more than" in err and "(line " in err
    print(f"alias bomb ({len(bomb)} bytes): refused in {took:.2f}s, peak RSS {peak} MB")
    assert took < 10 and peak < 300


def test_deep_nesting_is_refused(tmp_path):
    for depth in (100, 3000):
        err, took, peak = _load_in_subprocess(tmp_path, "targets: " + "[" * depth + "]" * depth + "\n")
        assert "(line 1, column" in err and ("nesting" in err or "depth" in err), err
        assert took < 10 and peak < 300
