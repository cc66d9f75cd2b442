from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from targets import TargetServers  # noqa: E402


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory):
    s = TargetServers(tmp_path_factory.mktemp("tls"))
    yield s
    s.close()


@pytest.fixture(autouse=True)
def stop_left_processes():
    """Processes a test started and did not stop (a later step of its setup raised before its
    try/finally) are stopped when it ends; those of wider-scoped fixtures, started before, stay."""
    from harness import Process

    before = set(Process.live)
    yield
    for proc in list(Process.live - before):
        proc.stop()


def _children() -> list[tuple[int, str]]:
    """This process's live child processes (pid, command line)."""
    import os

    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            pids.update(int(p) for p in open(f"/proc/self/task/{task}/children").read().split())
        except OSError:
            continue
    out = []
    for pid in sorted(pids):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z":
            out.append((pid, cmd[:200]))
    return out


@pytest.fixture(scope="session", autouse=True)
def stop_all_processes():
    """Stops what is left, then checks that no process a test started outlives the run."""
    import os
    import signal
    import time

    from harness import Process

    yield
    for proc in list(Process.live):
        proc.stop()
    left = _children()
    for _ in range(50):  # a child stopping on its own (a fixture's server reading EOF) gets 5 s
        if not left:
            break
        time.sleep(0.1)
        left = _children()
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes started by the tests outlived them: {left}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def procs(request):
    """The processes a test starts (append each as it starts): all stopped at the end, newest
    first, even when a later start failed; their logs' tails printed when the test failed."""
    started: list = []
    yield started
    call = getattr(request.node, "report_call", None)
    if call is None or call.failed:
        for p in started:
            print(f"--- {p.log_path.name}\n{p.log()[-2000:]}")
    for p in reversed(started):
        p.stop()


@pytest.fixture(autouse=True)
async def close_probe_state():
    """Each test's kinds and their state (clients, engines, pools) end with the test, as they
    end with an exporter run: nothing leaks into the next test."""
    yield
    import probing

    await probing.close_clients()


def pytest_report_header(config):
    import shutil
    import subprocess

    out = []
    for name in ("prometheus", "prometheus-alertmanager", "promtool"):
        path = shutil.which(name)
        if path:
            first = subprocess.run([path, "--version"], capture_output=True, text=True).stdout or ""
            first = first.splitlines()[0] if first else "?"
            out.append(f"{name}: {path}: {first}")
    return out
