"""CPU per probe of stackwatch's own hot path, in one process, with a profile on request.

    .venv/bin/python bench/micro.py --targets 1000 --probes 20000 [--profile] [--uvloop]

A target server runs in a subprocess on CPU 1 (the same one bench/bench.py uses); this process
is pinned to CPU 0 and runs the exporter's own path for every probe: the scheduler's run_once
(bounds, single flight), the kind's probe, the store and the collector's rendering.  Probes are
started flat out, ``--concurrency`` at a time.  It prints CPU-ms per probe (process CPU time /
probes); with ``--profile`` the top functions by own time as well.  Use it to compare changes
within one run; bench/bench.py is the end-to-end figure against blackbox_exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import TARGET_SERVER, free_port, write_config  # noqa: E402


async def run(cfg: Path, probes: int, concurrency: int, profile: bool) -> tuple[float, int, int]:
    from stackwatch.app import Exporter
    from stackwatch.kinds import load_config

    config = load_config(cfg)
    ex = Exporter(cfg, config)
    ex.probers.reload(ex.config)
    ex.store.set_targets(ex.config)
    from stackwatch.scheduler import Scheduler

    sched = Scheduler(ex.probers, ex.store.record, ex.config.scheduler)
    targets = list(ex.config.targets)
    failures = 0

    async def worker(k: int) -> None:
        nonlocal failures
        for i in range(k, probes, concurrency):
            t = targets[i % len(targets)]
            result = await sched.run_once(t)
            ex.store.record(t.name, result)
            failures += not result.success

    await asyncio.gather(*(worker(k) for k in range(concurrency)))  # warm-up: one pass
    failures = 0
    prof = cProfile.Profile() if profile else None
    c0, t0 = os.times(), time.perf_counter()
    if prof:
        prof.enable()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    if prof:
        prof.disable()
    c1, t1 = os.times(), time.perf_counter()
    await ex.probers.close()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    if prof:
        st = pstats.Stats(prof).sort_stats("tottime")
        st.print_stats(28)
        if os.environ.get("MICRO_CALLERS"):
            st.print_callers(os.environ["MICRO_CALLERS"])
    print(f"wall {t1 - t0:.2f}s, {probes / (t1 - t0):.0f} probes/s")
    return cpu * 1000 / probes, probes, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--probes", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    ports = [free_port() for _ in range(8)]
    server = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", TARGET_SERVER,
                               ",".join(map(str, ports)), "0.05"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout and server.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "micro.yml"
            write_config(cfg, args.targets, ports, 15.0, args.concurrency)
            if args.uvloop:
                import uvloop
                ms, n, failed = uvloop.run(run(cfg, args.probes, args.concurrency, args.profile))
            else:
                ms, n, failed = asyncio.run(run(cfg, args.probes, args.concurrency, args.profile))
        print(f"{ms:.3f} CPU-ms per probe over {n} probes ({failed} failed){' (uvloop)' if args.uvloop else ''}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
