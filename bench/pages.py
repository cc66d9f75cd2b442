"""The status page and API under many callers at scale: does the exporter stay responsive?

    .venv/bin/python bench/pages.py --targets 20000 --callers 10 --duration 30s
    .venv/bin/python bench/pages.py --stackwatch /path/to/other/checkout ...   # the same against another build

Starts a target server and stackwatch with N HTTP targets (60 s interval, so probing is light
and what is measured is the pages), waits until every target has a result (and the one GC
sweep the first results cause is over), then for
--duration runs --callers threads that each fetch ``/``, ``/api/v1/targets`` (default page),
``/api/v1/targets?limit=5000`` (the largest page) and a target's page in turn, while another
thread asks ``/-/healthy`` every 20 ms and times it.  Prints JSON: /-/healthy p50/p99/max,
pages served and their p50/p99, bytes per status-page row, scheduler lag p99 over the run,
RSS.  Works against an older checkout too (``--stackwatch``), so before/after figures come
from the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import histogram_quantile, pct, rss_mb  # noqa: E402
from soak import TARGET_SERVER, quiet_port, seconds  # noqa: E402


def get(url: str, timeout: float = 120) -> tuple[int, int, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            size = len(r.read())
            status = r.status
    except urllib.error.HTTPError as exc:
        size, status = len(exc.read()), exc.code
    return status, size, (time.perf_counter() - started) * 1000


def lag(base: str) -> dict[str, float]:
    """Scheduler lag buckets, and ("gc2", le) buckets of full GC passes."""
    with urllib.request.urlopen(base + "/metrics", timeout=120) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r'^stackwatch_scheduler_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    for m in re.finditer(r'^stackwatch_gc_pause_seconds_bucket\{generation="2",le="([^"]+)"\} (\S+)$', text, re.M):
        out["gc2:" + m.group(1)] = float(m.group(2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=20000)
    ap.add_argument("--callers", type=int, default=10)
    ap.add_argument("--duration", type=seconds, default=seconds("30s"))
    ap.add_argument("--stackwatch", type=Path, default=None,
                    help="a checkout whose exporter/ to run (default: this one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="stackwatch-pages-"))
    server = subprocess.Popen([sys.executable, "-c", TARGET_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    proc = None
    try:
        ports = [int(p) for p in server.stdout.readline().strip().split(",")]
        cfg = tmp / "pages.yml"
        lines = ["defaults: {interval: 60s, timeout: 5s}", "targets:"]
        for i in range(args.targets):
            kind = "err" if i % 10 == 0 else "ok"
            lines.append(f"  - {{name: t{i}, kind: http, url: 'http://127.0.0.1:{ports[i % len(ports)]}/{kind}/{i}'}}")
        cfg.write_text("\n".join(lines) + "\n")
        port = quiet_port()
        base = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        if args.stackwatch:
            env["PYTHONPATH"] = str(args.stackwatch / "exporter")
        proc = subprocess.Popen([sys.executable, "-m", "stackwatch", "--config.file", str(cfg),
                                 "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"],
                                env=env, cwd=tmp)
        deadline = time.monotonic() + 300
        while True:
            try:
                if get(base + "/-/ready", 5)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("stackwatch did not start")
            time.sleep(0.5)
        # One interval, so every target has a result and a history, and a little more: the
        # first results grow the GC's frozen set past its sweep bound once (one full pass, ~270 ms
        # at 20,000 targets); the window measures the steady state after it.
        time.sleep(95)
        lag0 = lag(base)
        healthy: list[float] = []
        pages: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}
        errors: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    healthy.append(get(base + "/-/healthy", 60)[2])
                except OSError as exc:
                    errors.append(f"healthy: {exc}")
                stop.wait(0.02)

        def call() -> None:
            paths = ["/", "/api/v1/targets", "/api/v1/targets?limit=5000", "/targets/t5"]
            i = 0
            while not stop.is_set():
                path = paths[i % len(paths)]
                i += 1
                try:
                    status, size, took = get(base + path)
                except OSError as exc:
                    errors.append(f"{path}: {exc}")
                    continue
                pages.setdefault(path, []).append(took)
                sizes[path] = size
                if status != 200:
                    errors.append(f"{path}: HTTP {status}")

        threads = [threading.Thread(target=watch)] + [threading.Thread(target=call) for _ in range(args.callers)]
        for t in threads:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in threads:
            t.join(180)
        lag1 = lag(base)
        delta = [({"le": le}, v - lag0.get(le, 0)) for le, v in lag1.items() if not le.startswith("gc2:")]
        gc_full = {le[4:]: v - lag0.get(le, 0) for le, v in lag1.items() if le.startswith("gc2:")}
        page = urllib.request.urlopen(base + "/", timeout=120).read().decode()
        rows = re.findall(r"<tr class=['\"]\w+['\"]>.*?</tr>", page)
        out = {
            "targets": args.targets, "callers": args.callers, "duration_s": args.duration,
            "stackwatch": str(args.stackwatch or "this checkout"),
            "healthy_ms": {"p50": pct(healthy, 0.5), "p99": pct(healthy, 0.99), "max": max(healthy, default=0),
                           "samples": len(healthy)},
            "pages": {p: {"served": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "bytes": sizes.get(p)}
                      for p, v in pages.items()},
            "status_page_bytes_per_row": round(sum(len(r.encode()) for r in rows) / max(len(rows), 1)),
            "scheduler_lag_p99_ms": round(histogram_quantile(0.99, delta) * 1000, 2) if delta else None,
            "gc_full_passes": gc_full.get("+Inf"),
            # the smallest bucket bound every full pass fits under (None: none, or over the top bound)
            "gc_full_pass_longest_ms_le": min((float(le) * 1000 for le, v in gc_full.items()
                                               if le != "+Inf" and v > 0 and v == gc_full.get("+Inf")), default=None),
            "rss_mb": round(rss_mb(proc.pid), 1), "errors": errors[:5], "error_count": len(errors),
        }
        print(json.dumps(out, indent=2))
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # main()'s cleanup stops stackwatch and the target server


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
