"""Sharding: replicas sharing one config each probe a disjoint part of it, and together all of it,
with every series keeping its identity (the target label) whichever replica probes it."""

from __future__ import annotations

import contextlib
import re

from harness import Stackwatch, wait_until
from expo import value as metric


def targets_in(text: str) -> set[str]:
    return set(re.findall(r'stackwatch_probe_success\{target="([^"]+)"', text))


def test_two_shards_cover_every_target_exactly_once(servers, tmp_path):
    cfg = tmp_path / "shared.yml"
    names = [f"svc-{i}" for i in range(24)]
    cfg.write_text("defaults: {interval: 500ms}\ntargets:\n" + "".join(
        f'  - {{name: {n}, kind: http, url: "{servers.url("/health")}"}}\n' for n in names))
    with contextlib.ExitStack() as running:  # stops what started, even when a later start fails
        a = Stackwatch(cfg, tmp_path, extra=["--shard.index", "0", "--shard.count", "2"])
        running.callback(a.stop)
        b = Stackwatch(cfg, tmp_path, env={"STACKWATCH_SHARD_INDEX": "1", "STACKWATCH_SHARD_COUNT": "2"})
        running.callback(b.stop)

        def both() -> tuple[set[str], set[str]] | None:
            ta, tb = targets_in(a.metrics()), targets_in(b.metrics())
            return (ta, tb) if len(ta) + len(tb) == len(names) else None

        ta, tb = wait_until(both, 15, "every target probed by one shard")
        assert ta and tb and not ta & tb and ta | tb == set(names)
        assert metric(a.metrics(), "stackwatch_shard_info", count="2", index="0") == 1
        assert metric(b.metrics(), "stackwatch_shard_info", count="2", index="1") == 1
        # A target of the other shard is not probed here.
        other = sorted(tb)[0]
        from harness import http_get
        assert http_get(a.base + f"/probe?target={other}")[0] == 404


def test_a_shard_index_out_of_range_is_refused(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "x.yml"
    cfg.write_text("targets: []\n")
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--shard.index", "2",
                           "--shard.count", "2"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--shard.index must be a number from 0 to --shard.count - 1 (1)" in proc.stderr
