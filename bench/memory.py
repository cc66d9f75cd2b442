"""Where stackwatch's memory goes per target: RSS and tracemalloc, by allocation site.

    .venv/bin/python bench/memory.py --targets 10000 [--top 20] [--openmetrics]

Loads a config of N http targets (bench/bench.py's), runs the exporter's own path once per
target against the local target server (probe, store, render), builds the /metrics body as a
gzip scrape would, and reports:

* RSS of the process before the config is loaded (imports), after loading, after one probe
  of every target, and after a /metrics build;
* the traced Python allocations after all that, grouped by source line, largest first, and
  their total per 1,000 targets.

tracemalloc slows allocation down, so it is started only after the imports (RSS figures are
taken with it running, as are the allocation figures).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import TARGET_SERVER, free_port, rss_mb, write_config  # noqa: E402


async def run(cfg: Path, args: argparse.Namespace) -> None:
    from stackwatch.app import Exporter
    from stackwatch.exposition import Format
    from stackwatch.kinds import load_config
    from stackwatch.scheduler import Scheduler

    rss = {"imports": rss_mb(os.getpid())}
    if not args.no_trace:
        tracemalloc.start(1)
    base = tracemalloc.take_snapshot() if not args.no_trace else None
    config = load_config(cfg)
    ex = Exporter(cfg, config)
    ex.probers.reload(ex.config)
    ex.store.set_targets(ex.config)
    gc.collect()
    rss["config loaded"] = rss_mb(os.getpid())
    if args.trim:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        rss["config loaded, malloc_trim"] = rss_mb(os.getpid())
    sched = Scheduler(ex.probers, ex.store.record, ex.config.scheduler)
    targets = list(ex.config.targets)

    async def worker(k: int) -> None:
        for i in range(k, len(targets), 64):
            t = targets[i]
            ex.store.record(t.name, await sched.run_once(t))

    for _ in range(2):  # two results per target: the second replaces the first, as in a steady state
        await asyncio.gather(*(worker(k) for k in range(64)))
    gc.collect()
    rss["every target probed twice"] = rss_mb(os.getpid())
    parts = await ex.collector.render(Format(args.openmetrics), ex.metrics.render, compress=True)
    size = sum(len(p) for p in parts)
    del parts
    gc.collect()
    rss[f"/metrics built ({size / 1e6:.1f} MB gzip)"] = rss_mb(os.getpid())
    await ex.probers.close()
    n = len(targets)
    if args.no_trace:
        print(f"{n} targets (no tracemalloc)")
        for k, v in rss.items():
            print(f"  RSS {k:45s} {v:7.1f} MB")
        return
    snap = tracemalloc.take_snapshot()
    stats = snap.compare_to(base, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{n} targets")
    for k, v in rss.items():
        print(f"  RSS {k:45s} {v:7.1f} MB")
    print(f"traced allocations: {total / 1e6:.1f} MB, {total / n:.0f} bytes per target "
          f"({total / n * 1000 / 1e6:.2f} MB per 1,000 targets)")
    for s in stats[: args.top]:
        frame = s.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {s.size_diff / 1e6:8.2f} MB {s.size_diff / n:7.0f} B/target {s.count_diff:9d} blocks  {where}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, default=10000)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--openmetrics", action="store_true")
    p.add_argument("--trim", action="store_true")
    p.add_argument("--no-trace", action="store_true", help="RSS only, without tracemalloc's own overhead")
    args = p.parse_args()
    ports = [free_port() for _ in range(8)]
    server = subprocess.Popen([sys.executable, "-c", TARGET_SERVER, ",".join(map(str, ports)), "0.05"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout and server.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "memory.yml"
            write_config(cfg, args.targets, ports, 15.0, 64)
            asyncio.run(run(cfg, args))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
