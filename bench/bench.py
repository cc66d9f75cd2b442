"""Benchmark stackwatch's HTTP probing (and blackbox_exporter's, when installed) on local targets.

    .venv/bin/python bench/bench.py --targets 1000 10000 --interval 15 --window 45

For each N it starts:
  * a target server process (raw asyncio, fresh connection per request, on 8 ports; a few
    paths answer after an injected 50 ms delay),
  * stackwatch with N http targets at the given interval, pinned to one CPU when taskset exists,
  * a scraper that GETs /metrics (gzip, as Prometheus does) every 2 s, measuring its latency
    while probing (the time includes decompressing on the client side).
It reports CPU-ms per probe (from /proc/PID/stat and stackwatch_probes_total), probes/s,
scheduler lag p99 (from stackwatch_scheduler_lag_seconds), latency error on the delayed
targets (measured duration - 50 ms), /metrics p50/p99, and RSS.

If prometheus-blackbox-exporter is installed, it then drives blackbox's /probe on the same
targets with the same number in flight and reports its CPU-ms per probe and the ratio, in the
same run (absolute numbers on these machines drift by +-40 %; ratios within a run are stable).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PORTS = 8
DELAY = 0.050
DELAYED_TARGETS = 20
"""The first delayed_targets(N) targets answer after DELAY: their measured durations minus DELAY
are the latency error (one in 20, at least 20, so p99 has a few hundred samples at 10k)."""


def delayed_targets(n: int) -> int:
    return max(DELAYED_TARGETS, n // 20)
CLK = os.sysconf("SC_CLK_TCK")

TARGET_SERVER = r'''
import asyncio, sys
DELAY = float(sys.argv[2])
BODY = b'{"status":"healthy","version":"3.0.0"}'
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        if b"\r\n\r\n" in self.buf:
            if b" /delay" in self.buf.split(b"\r\n", 1)[0]:
                asyncio.get_running_loop().call_later(DELAY, self.reply)
            else:
                self.reply()
    def reply(self):
        if not self.t.is_closing():
            self.t.write(RESP); self.t.close()
async def main():
    loop = asyncio.get_running_loop()
    for p in sys.argv[1].split(","):
        await loop.create_server(P, "127.0.0.1", int(p), backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
'''


def stackwatch_version() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent).stdout.strip()
    return f"{rev}{'+changes' if dirty else ''}"


def free_port() -> int:
    """A free port below the ephemeral range: at 100k targets the exporter opens thousands of
    outgoing connections a second, and one of them took a port chosen from that range before
    the worker meant to listen on it had bound it (a worker restart in a run)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def get(url: str, timeout: float = 120, gz: bool = False, timing: list[float] | None = None) -> bytes:
    """GET a URL; with ``timing``, append the ms until the last (compressed) byte arrived."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gz else {})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    if timing is not None:
        timing.append((time.perf_counter() - started) * 1000)
    return gzip.decompress(data) if gz else data


WANTED = ("stackwatch_probes_total", "stackwatch_scheduler_lag_seconds_bucket",
          "stackwatch_probe_last_run_timestamp_seconds", "stackwatch_probe_last_duration_seconds",
          "stackwatch_event_loop_info")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The few families the benchmark reads (parsing all 20 MB at 10k targets would cost seconds)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line.startswith(WANTED):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        if rest:
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    k, v = part.split("=", 1)
                    labels[k] = v.strip('"')
        out.setdefault(name, []).append((labels, float(value)))
    return out


def histogram_quantile(q: float, buckets: list[tuple[dict[str, str], float]]) -> float:
    pts = sorted(((float(l["le"].replace("+Inf", "inf")), v) for l, v in buckets))
    total = pts[-1][1]
    if total == 0:
        return 0.0
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in pts:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def write_config(path: Path, n: int, ports: list[int], interval: float, concurrency: int) -> None:
    lines = [f"defaults: {{interval: {int(interval * 1000)}ms, timeout: 5s}}",
             f"scheduler: {{max_concurrent_probes: {concurrency}}}", "targets:"]
    for i in range(n):
        port = ports[i % len(ports)]
        path_ = f"/delay/{i}" if i < delayed_targets(n) else f"/health/{i}"
        lines.append(f"  - {{name: t{i}, kind: http, url: 'http://127.0.0.1:{port}{path_}', "
                     f"assertions: ['$.status == healthy']}}")
    path.write_text("\n".join(lines) + "\n")


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_stackwatch(n: int, ports: list[int], args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    cfg = tmp / f"bench-{n}.yml"
    write_config(cfg, n, ports, args.interval, args.concurrency)
    port = free_port() if args.workers <= 1 else free_block(args.workers + 1)
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--web.listen-address", f"127.0.0.1:{port}",
           "--log.level", "error", *(["--event-loop", args.loop] if args.loop else [])]
    if args.workers > 1:  # one process per core: not pinned, the workers share the machine with the targets
        proc = subprocess.Popen([*cmd, "--workers", str(args.workers)])
    else:
        proc = subprocess.Popen([*pin(0), *cmd])
    try:
        ready_by = time.monotonic() + 300  # 100k targets: the config is checked, then every worker loads it
        while True:
            try:
                get(base + "/-/ready", 2)
                break
            except OSError:
                if time.monotonic() > ready_by or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        if args.workers > 1:
            endpoints = [f"http://{g['targets'][0]}" for g in json.loads(get(base + "/sd"))]
            pids = children(proc.pid)
        else:
            endpoints, pids = [base], [proc.pid]

        def scrape_all(gz: bool = False, timing: list[float] | None = None, parse: bool = True) -> tuple[dict, int]:
            merged: dict[str, list] = {}
            size = 0
            for e in endpoints:
                if not parse:  # time the scrape only: at 100k targets parsing would take this machine's CPU
                    raw = urllib.request.Request(e + "/metrics", headers={"Accept-Encoding": "gzip"})
                    started = time.perf_counter()
                    with urllib.request.urlopen(raw, timeout=120) as r:
                        size += len(r.read())
                    if timing is not None:
                        timing.append((time.perf_counter() - started) * 1000)
                    continue
                body = get(e + "/metrics", gz=gz, timing=timing)
                size += len(body)
                for k, v in parse_metrics(body.decode()).items():
                    merged.setdefault(k, []).extend(v)
            return merged, size

        def cpu() -> float:
            return sum(cpu_seconds(p) for p in pids)

        # Warm-up: one full interval so every target has been probed once and the spread is
        # steady, scraped as Prometheus would from the start (the first gzip body is built whole).
        warm_until = time.monotonic() + args.interval + 1
        while time.monotonic() < warm_until:
            scrape_all(gz=True, parse=not args.timing_only)
            time.sleep(min(args.scrape_every, max(0.0, warm_until - time.monotonic())))
        m0, _ = scrape_all(gz=True)
        cpu0, t0 = cpu(), time.monotonic()
        probes0 = sum(v for _, v in m0["stackwatch_probes_total"])
        lag0: dict[str, float] = {}
        for l, v in m0["stackwatch_scheduler_lag_seconds_bucket"]:
            lag0[l["le"]] = lag0.get(l["le"], 0) + v
        scrape_ms: list[float] = []
        delay_err: list[float] = []
        seen: dict[str, float] = {}
        delayed = delayed_targets(n)
        while time.monotonic() - t0 < args.window:
            s = time.perf_counter()
            m, size = scrape_all(gz=True, timing=scrape_ms, parse=not args.timing_only)  # gzip, as Prometheus asks
            if args.timing_only:
                time.sleep(max(0.0, args.scrape_every - (time.perf_counter() - s)))
                continue
            last_run = {l["target"]: v for l, v in m["stackwatch_probe_last_run_timestamp_seconds"]}
            for labels, v in m["stackwatch_probe_last_duration_seconds"]:
                t = labels["target"]
                if int(t[1:]) < delayed and last_run.get(t) != seen.get(t):
                    seen[t] = last_run.get(t, 0)
                    delay_err.append((v - DELAY) * 1000)
            time.sleep(max(0.0, args.scrape_every - (time.perf_counter() - s)))
        cpu1, t1 = cpu(), time.monotonic()
        rss = [rss_mb(p) for p in pids]  # before the last scrape, which parses everything
        m1, _ = scrape_all(gz=True)
        probes1 = sum(v for _, v in m1["stackwatch_probes_total"])
        failures = sum(v for l, v in m1["stackwatch_probes_total"] if l["result"] == "failure")
        lag_sum: dict[str, float] = {}
        for l, v in m1["stackwatch_scheduler_lag_seconds_bucket"]:
            lag_sum[l["le"]] = lag_sum.get(l["le"], 0) + v
        lag = [({"le": le}, v - lag0.get(le, 0)) for le, v in lag_sum.items()]
        probes = probes1 - probes0
        loops = sorted({l["loop"] for l, _ in m1.get("stackwatch_event_loop_info", [])})
        return {
            "targets": n, "event_loop": ",".join(loops) or "unknown", "workers": max(1, args.workers), "probes": probes, "failures_total": failures,
            "probes_per_s": probes / (t1 - t0),
            "cpu_ms_per_probe": (cpu1 - cpu0) * 1000 / max(probes, 1),
            "cpu_share_of_one_core": (cpu1 - cpu0) / (t1 - t0),
            "scheduler_lag_p99_ms": histogram_quantile(0.99, lag) * 1000,
            "latency_error_p50_ms": pct(delay_err, 0.5), "latency_error_p99_ms": pct(delay_err, 0.99),
            "latency_samples": len(delay_err),
            "metrics_p50_ms": pct(scrape_ms, 0.5), "metrics_p99_ms": pct(scrape_ms, 0.99),
            ("metrics_gzip_kb" if args.timing_only else "metrics_body_kb"): size / 1024,
            "metrics_scrapes": len(scrape_ms),
            "rss_mb": sum(rss), "rss_mb_per_worker": max(rss),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def free_block(n: int) -> int:
    """A port p with p .. p+n-1 free (a supervisor and its workers)."""
    while True:
        p = free_port()
        socks = []
        try:
            for i in range(n):
                k = socket.socket()
                socks.append(k)
                k.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for k in socks:
                k.close()


async def drive_blackbox(base: str, urls: list[str], total: int, concurrency: int, rate: float | None = None,
                         delayed: set[str] | None = None, errors: list[float] | None = None) -> int:
    """Send ``total`` /probe requests, ``concurrency`` at a time; with ``rate``, paced at rate/s.
    For the ``delayed`` URLs, blackbox's own probe_duration_seconds minus DELAY goes to ``errors``
    (ms): the reference for stackwatch's latency error, same target server, same moment."""
    import aiohttp

    done = 0
    sem = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(i: int) -> None:
            nonlocal done
            async with sem:
                url = urls[i % len(urls)]
                async with session.get(f"{base}/probe", params={"target": url, "module": "http_2xx"}) as r:
                    body = await r.read()
                    if b"probe_success 1" in body:
                        done += 1
                        if errors is not None and delayed and url in delayed:
                            for line in body.splitlines():
                                if line.startswith(b"probe_duration_seconds "):
                                    errors.append((float(line.split()[1]) - DELAY) * 1000)

        tasks = []
        for i in range(total):
            if rate:
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await sem.acquire()
                sem.release()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return done


PEERS_BIN = Path(__file__).resolve().parent.parent / ".peers" / "root" / "usr" / "bin"


def blackbox_binary() -> tuple[str, str] | None:
    """The newest blackbox_exporter here: .peers/ (tools/fetch-peers.sh, the current release from
    Debian testing) first, else Debian 12's.  Returns (path, version)."""
    found = []
    for path in (PEERS_BIN / "prometheus-blackbox-exporter", shutil.which("prometheus-blackbox-exporter")):
        if path and Path(path).is_file():
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
            out += subprocess.run([str(path), "--version"], capture_output=True, text=True).stderr
            version = out.split("version ", 1)[1].split()[0] if "version " in out else "unknown"
            found.append((tuple(int(x) for x in version.split(".") if x.isdigit()), str(path), version))
    if not found:
        return None
    _, path, version = max(found)
    return path, version


def run_blackbox(ports: list[int], n: int, probes: int, concurrency: int, tmp: Path,
                 rate: float | None = None) -> dict[str, float] | None:
    found = blackbox_binary()
    if not found:
        return None
    binary, version = found
    cfg = tmp / "blackbox.yml"
    cfg.write_text("modules:\n  http_2xx:\n    prober: http\n    timeout: 5s\n    http:\n"
                   "      preferred_ip_protocol: ip4\n      fail_if_body_not_matches_regexp: ['healthy']\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*pin(0), binary, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=error"], env={**os.environ, "GOMAXPROCS": "1"})
    try:
        for _ in range(100):
            try:
                get(base + "/-/healthy", 1)
                break
            except OSError:
                time.sleep(0.1)
        urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/health/{i}" for i in range(delayed_targets(n), n)]
        delayed: set[str] = set()
        if rate:  # paced, the delayed targets too, in stackwatch's proportion: its latency-error reference
            delayed = {f"http://127.0.0.1:{ports[i % len(ports)]}/delay/{i}" for i in range(delayed_targets(n))}
            urls = [u for pair in zip(sorted(delayed), urls) for u in pair] + urls[len(delayed):]
        asyncio.run(drive_blackbox(base, urls, 500, concurrency))  # warm-up
        errors: list[float] = []
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        ok = asyncio.run(drive_blackbox(base, urls, probes, concurrency, rate, delayed, errors))
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        return {"version": version, "probes": probes, "succeeded": ok, "probes_per_s": probes / (t1 - t0),
                "cpu_ms_per_probe": (cpu1 - cpu0) * 1000 / probes, "rss_mb": rss_mb(proc.pid),
                "latency_error_p50_ms": pct(errors, 0.5) if errors else None,
                "latency_error_p99_ms": pct(errors, 0.99) if errors else None, "latency_samples": len(errors)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=45.0, help="seconds measured after one warm-up interval")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scrape-every", type=float, default=2.0, help="seconds between /metrics scrapes")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "auto"), default=None,
                        help="stackwatch's --event-loop (default: not passed, the product's default; each run "
                             "records the loop that ran, from stackwatch_event_loop_info)")
    parser.add_argument("--workers", type=int, default=0, help="stackwatch --workers N (0: one process, pinned)")
    parser.add_argument("--no-blackbox", action="store_true", help="measure stackwatch only")
    parser.add_argument("--timing-only", action="store_true",
                        help="during the window, time the gzip scrapes without parsing them (no latency error): "
                             "for 100k targets, whose bodies would take this machine's CPU to parse")
    args = parser.parse_args()

    # This process (scraper, parser, blackbox driver) shares CPU 1 with the target server, so it
    # never steals the CPU the measured exporter is pinned to.
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    ports = [free_port() for _ in range(PORTS)]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = subprocess.Popen([*pin(1), sys.executable, "-c", TARGET_SERVER, ",".join(map(str, ports)), str(DELAY)],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout and server.stdout.readline().strip() == "ready"
        results: dict[str, object] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
            "cpus": os.cpu_count(), "machine": platform.machine(), "interval_s": args.interval,
            "blackbox_exporter": (blackbox_binary() or (None, None))[1], "stackwatch": stackwatch_version(),
            "event_loop_asked": args.loop or "default",
            "window_s": args.window, "concurrency": args.concurrency, "runs": []}
        try:
            for n in args.targets:
                sw = run_stackwatch(n, ports, args, tmp)
                # blackbox twice on the same targets: flat out (its best CPU/probe), and paced at
                # stackwatch's probe rate (the same operating point, the fair comparison).
                bb = bb_paced = None
                if not args.no_blackbox:
                    bb = run_blackbox(ports, n, int(sw["probes"]) or 5000, args.concurrency, tmp)
                    bb_paced = run_blackbox(ports, n, int(sw["probes"]) or 5000, args.concurrency, tmp,
                                            rate=sw["probes_per_s"])
                row = {"stackwatch": sw, "blackbox_flat_out": bb, "blackbox_same_rate": bb_paced,
                       "cpu_ratio_vs_blackbox_flat_out": sw["cpu_ms_per_probe"] / bb["cpu_ms_per_probe"] if bb else None,
                       "cpu_ratio_vs_blackbox_same_rate":
                           sw["cpu_ms_per_probe"] / bb_paced["cpu_ms_per_probe"] if bb_paced else None}
                results["runs"].append(row)  # type: ignore[union-attr]
                print(json.dumps(row, indent=2), flush=True)
        finally:
            server.terminate()
            server.wait(10)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
