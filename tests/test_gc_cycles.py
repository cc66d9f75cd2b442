"""A probe leaves no reference cycles behind: once it ends, reference counting frees all it made.

Why it matters: the exporter moves what survives a young GC pass into the permanent generation
every few seconds (app.py, to keep full passes short).  An object that is part of a cycle and
in flight at that moment is freed only by the next full sweep, so a probe path that makes
cyclic garbage shows as memory growing by the hour under load.  Each case runs probes with the
cyclic GC off and counts what a collection then finds (gc.DEBUG_SAVEALL keeps it for the count).

The peers are real servers in a child process (tests/hostile.py), so nothing of theirs is counted.
"""

from __future__ import annotations

import asyncio
import collections
import gc

import pytest
from probing import probers
from stackwatch.kinds import parse_config
from test_fd_leaks import hostile  # noqa: F401 -- the fixture

RUNS = 30


def http_target(url: str, **extra: str):
    fields = {"timeout": "400ms", **extra}
    lines = ["targets:", "  - name: t", "    kind: http", f"    url: {url}"] + [f"    {k}: {v}" for k, v in fields.items()]
    return parse_config("\n".join(lines) + "\n").targets[0]


async def cyclic_garbage_per_probe(target, runs: int = RUNS) -> tuple[float, collections.Counter]:
    p = probers()
    for _ in range(5):  # clients, pools, TLS contexts and compiled paths exist before counting
        await p.run(target, verbose=False)
    await asyncio.sleep(0.05)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        reasons = set()
        for _ in range(runs):
            r = await p.run(target, verbose=False)
            reasons.add(r.reason.value if r.reason else "ok")
        await asyncio.sleep(0.1)  # closes the loop has scheduled
        gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
        count = len(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    return count / runs, kinds


CASES = {
    "success": ("ok", "/", {}),
    "http_500": ("ok", "/500", {}),
    "json_assertion": ("ok", "/", {"assertions": '["$.status == healthy"]', "info": "{version: $.version}"}),
    "timeout": ("silent", "/", {"timeout": "100ms"}),
    "reset": ("slam", "/", {}),
    "body_too_large": ("big", "/", {"body_size_limit": "64KiB", "timeout": "2s"}),
    "refused": (None, "/", {}),
    "tls_success": ("tls_ok", "/", {}),
    "tls_timeout": ("tls_silent", "/", {"timeout": "100ms"}),
    "redirect": ("redirect_ok", "/", {}),
    # Not here: keep_alive targets.  Their connections are httpx's (anyio over asyncio's
    # transports, whose cycle stackwatch cannot reach); a connection kept alive makes none per
    # probe, a new one does, and the frozen-growth sweep (app.py) frees those.
}


@pytest.mark.parametrize("case", list(CASES))
async def test_no_cyclic_garbage_per_probe(hostile, case):  # noqa: F811
    ports, tls = hostile
    mode, path, extra = CASES[case]
    scheme = "https" if mode and mode.startswith("tls") else "http"
    port = ports[mode] if mode else 1
    if scheme == "https":
        extra = {**extra, "tls_config": f"{{ca_file: {tls['ca']}}}"}
    per_probe, kinds = await cyclic_garbage_per_probe(http_target(f"{scheme}://127.0.0.1:{port}{path}", **extra))
    assert per_probe < 1, f"{per_probe:.1f} objects in reference cycles left per probe: {kinds.most_common(8)}"


SQL_CASES = {
    "postgresql": "url: postgresql+psycopg://postgres@127.0.0.1:5432/test\n    queries: [{name: one, sql: 'SELECT 1 AS v', values: [v]}]",
    "postgresql_statement_timeout": "url: postgresql+psycopg://postgres@127.0.0.1:5432/test\n    timeout: 300ms\n"
                                    "    queries: [{name: one, sql: 'SELECT pg_sleep(5) AS v', values: [v]}]",
    "postgresql_refused": "url: postgresql+psycopg://postgres@127.0.0.1:1/test",
    "mariadb": "url: mysql+pymysql://root@127.0.0.1:3306/test\n    queries: [{name: one, sql: 'SELECT 1 AS v', values: [v]}]",
    "sqlite_missing": "url: sqlite:////nonexistent-dir/x.db",
}


@pytest.mark.parametrize("case", list(SQL_CASES))
async def test_no_cyclic_garbage_per_sql_probe(case):
    """SQL probes run in threads and their failures cross back as exceptions: the drivers' and
    SQLAlchemy's tracebacks hold cycles, which are broken once the failure is classified."""
    target = parse_config(f"targets:\n  - name: db\n    kind: sql\n    interval: 30s\n    {SQL_CASES[case]}\n").targets[0]
    per_probe, kinds = await cyclic_garbage_per_probe(target, runs=8)
    assert per_probe < 1, f"{per_probe:.1f} objects in reference cycles left per probe: {kinds.most_common(8)}"


async def test_cycles_frozen_while_alive_are_swept_even_across_reloads(tmp_path, monkeypatch):
    """Garbage the periodic freeze caught alive is reclaimed: once the frozen set has grown past
    the bound since the last sweep, a sweep frees it, and a reload in between does not hide it."""
    from stackwatch import app as app_module
    from stackwatch.app import Exporter
    from stackwatch.kinds import load_config

    monkeypatch.setattr(app_module, "FREEZE_EVERY", 0.05)
    monkeypatch.setattr(app_module, "SWEEP_GROWTH_MIN", 5_000)
    monkeypatch.setattr(app_module, "SWEEP_GROWTH", 0.0)
    cfg = tmp_path / "sw.yml"
    cfg.write_text("targets:\n  - {name: a, kind: http, url: 'http://127.0.0.1:1/', interval: 1h}\n")
    ex = Exporter(str(cfg), load_config(str(cfg)))
    await ex.start()
    try:
        await asyncio.sleep(0.2)
        sweeps = ex.gc_sweeps

        class Node:
            def __init__(self) -> None:
                self.me = self  # a cycle: only the cyclic GC can free it

        held = [Node() for _ in range(20_000)]
        await asyncio.sleep(0.2)  # a freeze or two: the nodes, alive, are now frozen
        assert gc.get_freeze_count() >= 20_000
        del held  # garbage now, but frozen: reference counting cannot free a cycle
        ok, message = await ex.reload()  # a reload must not take the growth for the new normal
        assert ok, message
        for _ in range(100):
            await asyncio.sleep(0.05)
            if ex.gc_sweeps > sweeps:
                break
        assert ex.gc_sweeps > sweeps, "no sweep ran"
        await asyncio.sleep(0.2)
        assert not any(type(o).__name__ == "Node" for o in gc.get_objects()), "the frozen cycles were kept"
    finally:
        await ex.stop()
        gc.unfreeze()
