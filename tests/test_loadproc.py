"""Large config files load in a child process (stackwatch.loadproc): the same targets as an
in-process load, the same located errors, every heartbeat check kept by each shard, and the
in-process load when the child cannot run.  Equal values are shared between loaded targets."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from stackwatch import config as _config, loadproc
from stackwatch.config import ConfigError, shard_of
from stackwatch.kinds import config_models, load_config

N = 3000  # ~330 KB: over loadproc.ISOLATE_BYTES


def write(path: Path, n: int = N, bad: int | None = None, heartbeats: int = 0) -> Path:
    lines = ["defaults: {interval: 30s, timeout: 5s}", "targets:"]
    for i in range(n):
        url = "not a url" if i == bad else f"http://127.0.0.1:9/health/{i}"
        lines.append(f"  - {{name: web-{i}, kind: http, url: '{url}', labels: {{team: t{i % 3}}}, "
                     f"assertions: ['$.status == healthy'], headers: {{X-Probe: stackwatch-{i % 2}}}}}")
    for i in range(heartbeats):
        lines.append(f"  - {{name: job-{i}, kind: heartbeat, schedule: {{every: 1h}}, token: '${{HB_TOKEN}}'}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def in_process(path: Path, shard: tuple[int, int] = (0, 1)) -> _config.Config:
    return _config.load_config(path, kinds=config_models(), shard=shard)


def children_started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    started: list[list[str]] = []
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        started.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(loadproc.subprocess, "run", run)
    return started


def test_a_large_file_loads_in_a_child_as_it_loads_in_process(tmp_path, monkeypatch):
    path = write(tmp_path / "big.yml")
    assert path.stat().st_size >= loadproc.ISOLATE_BYTES
    started = children_started(monkeypatch)
    got = load_config(path)
    assert started and started[0][1:] == ["-m", "stackwatch.kinds"]
    want = in_process(path)
    assert got.targets == want.targets and len(got.targets) == N
    assert got.defaults == want.defaults and got.source == want.source == str(path)
    # shared where equal, in the child's result as in the in-process one
    assert got.targets[0].tls_config is got.targets[1].tls_config
    assert got.targets[0].headers is not got.targets[1].headers  # different values stay apart
    assert got.targets[0].headers == got.targets[2].headers == {"X-Probe": "stackwatch-0"}


def test_a_small_file_loads_in_process(tmp_path, monkeypatch):
    started = children_started(monkeypatch)
    assert len(load_config(write(tmp_path / "small.yml", n=20)).targets) == 20
    assert started == []


def test_errors_from_the_child_are_located_as_in_process(tmp_path):
    path = write(tmp_path / "bad.yml", bad=2500)
    with pytest.raises(ConfigError) as child:
        load_config(path)
    with pytest.raises(ConfigError) as here:
        in_process(path)
    assert child.value.render() == here.value.render()
    assert "targets[2500].url" in child.value.render() and "line 2503" in child.value.render()


def test_a_shard_keeps_its_targets_and_every_heartbeat_check(tmp_path, monkeypatch):
    monkeypatch.setenv("HB_TOKEN", "a-token-long-enough-for-a-heartbeat-check")  # the child's environment too
    path = write(tmp_path / "sharded.yml", heartbeats=6)
    shards = [load_config(path, shard=(i, 2)) for i in range(2)]
    names = [{t.name for t in s.targets} for s in shards]
    assert not names[0] & names[1] and len(names[0] | names[1]) == N + 6
    assert all(shard_of(n, 2) == i for i, ns in enumerate(names) for n in ns)
    for s in shards:
        assert sorted(t.name for t in s.heartbeats) == [f"job-{i}" for i in range(6)]
        assert sorted(t.name for t in s.shard(0, 1).heartbeats) == [f"job-{i}" for i in range(6)]


def test_the_load_happens_in_process_when_the_child_cannot_run(tmp_path, monkeypatch, caplog):
    path = write(tmp_path / "big.yml")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.WARNING, logger="stackwatch.config"):
        got = load_config(path)
    assert len(got.targets) == N
    assert "did not start" in caplog.text
    monkeypatch.setattr(sys, "executable", "/bin/false")  # starts, answers nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stackwatch.config"):
        assert load_config(path).targets == got.targets
    assert "exit code 1" in caplog.text


def test_sharing_keeps_values_that_compare_equal_but_differ():
    """Sharing makes equal values one object, never one value another: -0.0 stays -0.0, 1 stays
    an int beside 1.0 and True, and a target's own values are unchanged."""
    import math

    from stackwatch.kinds import parse_config

    text = ("targets:\n"
            "  - {name: a, kind: http, url: 'http://127.0.0.1:9/', labels: {x: '1'}}\n"
            "  - {name: b, kind: http, url: 'http://127.0.0.1:9/', labels: {x: '1'}}\n")
    a, b = parse_config(text).targets
    assert a.labels == b.labels and a.url is b.url and a.interval is b.interval
    sharing = _config.Sharing()
    assert math.copysign(1, sharing.value(-0.0)) == -1 and math.copysign(1, sharing.value(0.0)) == 1
    one, one_f, true = sharing.value(1), sharing.value(1.0), sharing.value(True)
    assert (type(one), type(one_f), type(true)) == (int, float, bool)
