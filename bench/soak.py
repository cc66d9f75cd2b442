"""Soak: stackwatch under a sustained mixed load, sampled over time, with the slope of everything.

    .venv/bin/python bench/soak.py --duration 2h                         # the full mix (2,000 HTTP + 10 SQL)
    .venv/bin/python bench/soak.py --targets 300 --duration 150s --warmup 30s --sample-every 5s   # CI

The mix (scaled to --targets, proportions of the 2,000-target run):
  * HTTP targets every 5 s, timeout 2 s: 75 % healthy, 5 % slow (answer after 1 s), 6 % answering
    500, 4 % accepting and never answering, 4 % closing at once, 3 % sending a 2 MB body, 3 %
    refused (nothing listens);
  * 10 SQL targets on PostgreSQL (8 quick queries, 2 ``pg_sleep(3)`` under a 2 s timeout);
  * ``max_concurrent_probes: 256``;
  * /metrics scraped with gzip every 5 s; ``/`` and ``/api/v1/targets`` every 30 s;
  * every 60 s, 50 targets swapped for new ones and SIGHUP sent (a reload).

Every --sample-every it writes a CSV row: RSS, fds, threads, CPU, probe rate, scheduler lag p99
(from stackwatch's histogram, over the sample's window), /metrics and page latency (max in the
window), frozen GC objects, TCP states of stackwatch's sockets, PostgreSQL connections.  At the
end it prints each column's least-squares slope per hour over the samples after --warmup, and
exits non-zero when fds, threads or database connections grow, or RSS grows by more than
--max-rss-growth MB per hour (or the probe rate falls short of plan, or a reload failed).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_seconds, free_port, histogram_quantile, rss_mb, stackwatch_version  # noqa: E402

INTERVAL = 5.0
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MIX = (("ok", 0.75), ("slow", 0.05), ("err", 0.06), ("hang", 0.04), ("close", 0.04), ("big", 0.03), ("refused", 0.03))

TARGET_SERVER = r'''
import asyncio, sys
OK = b'{"status":"healthy","version":"3.0.0"}'
def answer(status, body):
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
RESP = {b"/ok": answer(b"200 OK", OK), b"/err": answer(b"500 Internal Server Error", b'{"error":"boom"}'),
        b"/big": answer(b"200 OK", b"x" * (2 * 1024 * 1024)), b"/slow": answer(b"200 OK", OK)}
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        if b"\r\n\r\n" not in self.buf:
            return
        path = self.buf.split(b" ", 2)[1].split(b"/")
        kind = b"/" + path[1]
        self.buf = b""
        if kind == b"/hang":
            return  # never answers; closes when the client does
        if kind == b"/close":
            self.t.abort(); return
        if kind == b"/slow":
            asyncio.get_running_loop().call_later(1.0, self.reply, RESP[kind]); return
        self.reply(RESP.get(kind, RESP[b"/ok"]))
    def reply(self, data):
        if not self.t.is_closing():
            self.t.write(data); self.t.close()
    def connection_lost(self, exc): pass
async def main():
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(8):
        server = await loop.create_server(P, "127.0.0.1", 0, backlog=4096)
        ports.append(server.sockets[0].getsockname()[1])
    print(",".join(map(str, ports)), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
asyncio.run(main())
'''

TCP_STATES = {"01": "established", "02": "syn_sent", "06": "time_wait", "08": "close_wait", "04": "fin_wait1",
              "05": "fin_wait2", "09": "last_ack", "0A": "listen", "07": "close", "0B": "closing"}


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 150s, 30m, 2h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def write_config(path: Path, n: int, ports: list[int], refused_port: int, generation: int, swap: int,
                 sql: bool, drop: frozenset[str] = frozenset()) -> None:
    lines = [f"defaults: {{interval: {INTERVAL:g}s, timeout: 2s}}", "scheduler: {max_concurrent_probes: 256}",
             "targets:"]
    counts = [(kind, 0 if kind in drop else max(1, round(n * share))) for kind, share in MIX]
    counts[0] = ("ok", n - sum(c for _, c in counts[1:]))
    i = 0
    for kind, count in counts:
        for j in range(count):
            port = refused_port if kind == "refused" else ports[i % len(ports)]
            # the first `swap` healthy targets get new names at every reload (added and removed)
            name = f"{kind}-{j}" + (f"-g{generation}" if kind == "ok" and j < swap else "")
            lines.append(f"  - {{name: {name}, kind: http, url: 'http://127.0.0.1:{port}/{kind}/{j}'"
                         + (", assertions: ['$.status == healthy']" if kind == "ok" else "") + "}")
            i += 1
    if sql:
        for j in range(10):
            slow = j < 2
            q = "SELECT pg_sleep(3) AS v" if slow else "SELECT count(*) AS v FROM pg_stat_activity"
            lines.append(f"  - {{name: sql-{j}, kind: sql, url: '{PG}', interval: 5s, timeout: 2s, "
                         f"queries: [{{name: soak_{j}, sql: '{q}', values: [v]}}]}}")
    path.write_text("\n".join(lines) + "\n")


def fetch(url: str, timeout: float = 60, gz: bool = False) -> tuple[float, bytes]:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gz else {})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    took = (time.perf_counter() - started) * 1000
    return took, gzip.decompress(data) if gz else data


def metric_lines(text: str, names: tuple[str, ...]) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith(names):
            head, _, value = line.rpartition(" ")
            name = head.split("{", 1)[0]
            out.setdefault(name, []).append((head, float(value)))
    return out


def lag_buckets(m: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
    out = {}
    for head, v in m.get("stackwatch_scheduler_lag_seconds_bucket", []):
        out[re.search(r'le="([^"]+)"', head).group(1)] = v
    return out


def own_sockets(pid: int):
    """The columns of /proc/PID/net/tcp{,6} rows that are the process's own sockets."""
    inodes = socket_inodes(pid)
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[9] in inodes:
                yield cols


def socket_states(pid: int) -> dict[str, int]:
    states: dict[str, int] = {}
    for cols in own_sockets(pid):
        name = TCP_STATES.get(cols[3], cols[3])
        states[name] = states.get(name, 0) + 1
    return states


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class Pages(threading.Thread):
    """/metrics (gzip) every 5 s, / and /api/v1/targets every 30 s; latencies kept per window."""

    def __init__(self, base: str, metrics: bool = True, pages: bool = True):
        super().__init__(daemon=True)
        self.base = base
        self.want_metrics, self.want_pages = metrics, pages
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.metrics_ms: list[float] = []
        self.pages_ms: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        next_page = time.monotonic()
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if self.want_metrics:
                    took, _ = fetch(self.base + "/metrics", gz=True)
                    with self.lock:
                        self.metrics_ms.append(took)
                if self.want_pages and started >= next_page:
                    next_page = started + 30
                    for path in ("/", "/api/v1/targets"):
                        took, _ = fetch(self.base + path)
                        with self.lock:
                            self.pages_ms.append(took)
            except OSError as exc:
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(max(0.0, 5 - (time.monotonic() - started)))

    def window(self) -> tuple[list[float], list[float]]:
        with self.lock:
            out = (self.metrics_ms, self.pages_ms)
            self.metrics_ms, self.pages_ms = [], []
        return out


def gc_buckets(m: dict[str, list[tuple[str, float]]]) -> dict[tuple[str, str], float]:
    out = {}
    for head, v in m.get("stackwatch_gc_pause_seconds_bucket", []):
        out[(re.search(r'generation="(\d)"', head).group(1), re.search(r'le="([^"]+)"', head).group(1))] = v
    return out


def gc_window(prev: dict[tuple[str, str], float], cur: dict[tuple[str, str], float]) -> tuple[float, float]:
    """(full passes, upper bound in ms of the longest pass of any generation) in a window."""
    full = cur.get(("2", "+Inf"), 0) - prev.get(("2", "+Inf"), 0)
    longest = 0.0
    bounds = sorted({le for _, le in cur}, key=lambda x: float(x.replace("+Inf", "inf")))
    for gen in ("0", "1", "2"):
        below = 0.0
        for le in bounds:
            n = cur.get((gen, le), 0) - prev.get((gen, le), 0)
            if n > below:
                longest = max(longest, float(le.replace("+Inf", "inf")) * 1000)
            below = n
    return full, longest


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def pg_connections(engine, pid: int) -> int:
    """Sessions PostgreSQL has open for stackwatch's process (matched by client port)."""
    ports = {int(cols[1].rsplit(":", 1)[1], 16) for cols in own_sockets(pid)
             if cols[2].endswith(":1538")}  # remote port 5432
    with engine.connect() as c:
        rows = c.exec_driver_sql("SELECT client_port FROM pg_stat_activity WHERE client_port IS NOT NULL").all()
    return sum(1 for (p,) in rows if p in ports)


def slope_per_hour(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx * 3600


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=2000, help="HTTP targets (default 2000)")
    ap.add_argument("--duration", type=seconds, default=seconds("2h"))
    ap.add_argument("--warmup", type=seconds, default=seconds("10m"), help="left out of the slopes (default 10m)")
    ap.add_argument("--sample-every", type=seconds, default=seconds("30s"))
    ap.add_argument("--reload-every", type=seconds, default=seconds("60s"))
    ap.add_argument("--swap", type=int, default=50, help="targets swapped at each reload")
    ap.add_argument("--no-sql", action="store_true", help="leave out the PostgreSQL targets")
    ap.add_argument("--drop", action="append", default=[],
                    choices=["slow", "err", "hang", "close", "big", "refused", "pages", "metrics", "reloads"],
                    help="leave one factor out (HTTP kinds become healthy targets); repeatable")
    ap.add_argument("--max-rss-growth", type=float, default=5.0, help="MB per hour after warm-up (default 5)")
    ap.add_argument("--max-fd-growth", type=float, default=10.0,
                    help="fds gained over the run after warm-up, by the fitted slope (default 10)")
    ap.add_argument("--max-lag-p99-ms", type=float, default=0.0,
                    help="fail if the scheduler lag p99 after warm-up is over this (0: report only)")
    ap.add_argument("--event-loop", default=None, help="passed to stackwatch (default: stackwatch's own)")
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for stackwatch's environment")
    ap.add_argument("--csv", type=Path, default=None, help="where the samples go (default: a temp file)")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here too")
    args = ap.parse_args()
    args.version = stackwatch_version()  # the code that runs: the checkout may change during a long run
    swap = min(args.swap, int(args.targets * 0.75))
    drop = frozenset(args.drop)
    if "reloads" in drop:
        args.reload_every = float("inf")

    tmp = Path(tempfile.mkdtemp(prefix="stackwatch-soak-"))
    server = subprocess.Popen([sys.executable, "-c", TARGET_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    proc = None
    pages = None
    engine = None
    try:
        line = server.stdout.readline().strip()
        if not line:
            raise SystemExit("the target server did not start")
        ports = [int(p) for p in line.split(",")]
        refused = free_port()
        cfg = tmp / "soak.yml"
        generation = 0
        write_config(cfg, args.targets, ports, refused, generation, swap, not args.no_sql, drop)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--web.listen-address",
               f"127.0.0.1:{port}", "--log.level", "warn"]
        if args.event_loop:
            cmd += ["--event-loop", args.event_loop]
        env = {**os.environ, **dict(e.split("=", 1) for e in args.env)}
        log = open(tmp / "stackwatch.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        ready_by = time.monotonic() + 60
        while True:
            try:
                fetch(base + "/-/ready", 2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > ready_by:
                    raise SystemExit(f"stackwatch did not start: {(tmp / 'stackwatch.log').read_text()[-2000:]}")
                time.sleep(0.2)
        if not args.no_sql:
            import sqlalchemy as sa

            engine = sa.create_engine(PG, poolclass=sa.pool.NullPool)
        pages = Pages(base, "metrics" not in drop, "pages" not in drop)
        pages.start()
        out = args.csv or tmp / "soak.csv"
        columns = ["t_s", "rss_mb", "fds", "threads", "cpu_share", "probes_per_s", "planned_per_s", "lag_p99_ms",
                   "gc_full_passes", "gc_longest_ms_le", "metrics_max_ms", "pages_max_ms", "frozen_objects", "gc_sweeps", "reloads_ok", "reload_failures",
                   "db_connections", "tcp_established", "tcp_time_wait", "tcp_close_wait", "tcp_other"]
        rows: list[dict[str, float]] = []
        n_sql = 0 if args.no_sql else 10
        planned = (args.targets + n_sql) / INTERVAL
        start = time.monotonic()
        next_reload = start + args.reload_every
        reloads = 0
        prev = None
        first_steady = last = None
        failures: list[str] = []
        print(f"soak: {args.targets} HTTP + {n_sql} SQL targets for {args.duration:g}s, samples -> {out}", flush=True)
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            next_sample = start + args.sample_every
            while time.monotonic() - start < args.duration:
                now = time.monotonic()
                if now >= next_reload:
                    generation += 1
                    write_config(cfg, args.targets, ports, refused, generation, swap, not args.no_sql, drop)
                    proc.send_signal(signal.SIGHUP)
                    reloads += 1
                    next_reload += args.reload_every
                if now < next_sample:
                    time.sleep(min(next_sample, next_reload) - now)
                    continue
                next_sample += args.sample_every
                if proc.poll() is not None:
                    failures.append(f"stackwatch exited with {proc.returncode}")
                    break
                _, body = fetch(base + "/metrics")
                m = metric_lines(body.decode(), ("stackwatch_probes_total", "stackwatch_scheduler_lag_seconds_bucket",
                                                 "stackwatch_gc_frozen_objects", "stackwatch_gc_sweeps",
                                                 "stackwatch_gc_pause_seconds_bucket",
                                                 "stackwatch_config_reload_failures_total",
                                                 "stackwatch_config_last_reload_successful"))
                cur = {"t": time.monotonic(), "cpu": cpu_seconds(proc.pid),
                       "lag": lag_buckets(m), "gc": gc_buckets(m)}
                # every probe started is observed once by the lag histogram, whose count survives
                # reloads (the per-target counters of removed targets leave /metrics)
                cur["probes"] = cur["lag"].get("+Inf", 0.0)
                metrics_ms, pages_ms = pages.window()
                states = socket_states(proc.pid)
                row = {"t_s": round(cur["t"] - start, 1), "rss_mb": round(rss_mb(proc.pid), 1),
                       "fds": len(os.listdir(f"/proc/{proc.pid}/fd")), "threads": threads(proc.pid),
                       "metrics_max_ms": round(max(metrics_ms, default=0), 1),
                       "pages_max_ms": round(max(pages_ms, default=0), 1),
                       "frozen_objects": sum(v for _, v in m.get("stackwatch_gc_frozen_objects", [])),
                       "gc_sweeps": sum(v for _, v in m.get("stackwatch_gc_sweeps_total", [])),
                       "reloads_ok": sum(v for _, v in m.get("stackwatch_config_last_reload_successful", [])),
                       "reload_failures": sum(v for _, v in m.get("stackwatch_config_reload_failures_total", [])),
                       "db_connections": pg_connections(engine, proc.pid) if engine is not None else 0,
                       "tcp_established": states.pop("established", 0), "tcp_time_wait": states.pop("time_wait", 0),
                       "tcp_close_wait": states.pop("close_wait", 0),
                       "tcp_other": sum(v for k, v in states.items() if k != "listen"),
                       "planned_per_s": round(planned, 1)}
                if prev is not None:
                    dt = cur["t"] - prev["t"]
                    row["cpu_share"] = round((cur["cpu"] - prev["cpu"]) / dt, 3)
                    row["probes_per_s"] = round((cur["probes"] - prev["probes"]) / dt, 1)
                    delta = [({"le": le}, v - prev["lag"].get(le, 0)) for le, v in cur["lag"].items()]
                    row["lag_p99_ms"] = round(histogram_quantile(0.99, delta) * 1000, 2)
                    row["gc_full_passes"], row["gc_longest_ms_le"] = gc_window(prev["gc"], cur["gc"])
                if first_steady is None and row["t_s"] >= args.warmup:
                    first_steady = cur
                last = cur
                prev = cur
                writer.writerow(row)
                fh.flush()
                rows.append(row)
                print(" ".join(f"{k}={row.get(k, '')}" for k in columns), flush=True)
        overall = None
        if first_steady is not None and last is not None and last is not first_steady:
            delta = [({"le": le}, v - first_steady["lag"].get(le, 0)) for le, v in last["lag"].items()]
            overall = round(histogram_quantile(0.99, delta) * 1000, 2)
        return summarize(rows, columns, args, reloads, pages.errors if pages else [], failures, out, planned, overall)
    finally:
        if pages is not None:
            pages.stop.set()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if server.poll() is None:
            server.stdin.close()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if engine is not None:
            engine.dispose()


def summarize(rows: list[dict[str, float]], columns: list[str], args: argparse.Namespace, reloads: int,
              page_errors: list[str], failures: list[str], out: Path, planned: float,
              lag_p99_overall: float | None) -> int:
    steady = [r for r in rows if r["t_s"] >= args.warmup and "probes_per_s" in r]
    if len(steady) < 3:
        failures.append(f"only {len(steady)} samples after the warm-up: run longer or sample more often")
        steady = rows
    xs = [r["t_s"] for r in steady]
    hours = (xs[-1] - xs[0]) / 3600 if len(xs) > 1 else 0.0
    slopes = {c: slope_per_hour(xs, [float(r.get(c) or 0) for r in steady]) for c in columns[1:]}
    mean = {c: sum(float(r.get(c) or 0) for r in steady) / len(steady) for c in columns[1:]}
    lags = sorted(float(r.get("lag_p99_ms") or 0) for r in steady)
    summary = {
        "stackwatch": args.version, "date": time.strftime("%Y-%m-%d"), "targets": args.targets,
        "sql": not args.no_sql, "dropped": sorted(args.drop), "duration_s": args.duration, "warmup_s": args.warmup, "samples": len(steady),
        "reloads": reloads, "slope_per_hour": {k: round(v, 3) for k, v in slopes.items()},
        "mean": {k: round(v, 2) for k, v in mean.items()},
        "lag_p99_ms_after_warmup": lag_p99_overall,
        "lag_p99_ms_worst_window": lags[-1] if lags else None,
        "lag_p99_ms_median_window": lags[len(lags) // 2] if lags else None,
        "rss_mb_first_last": [steady[0]["rss_mb"], steady[-1]["rss_mb"]],
        "fds_first_last": [steady[0]["fds"], steady[-1]["fds"]], "csv": str(out),
    }
    # What counts as growth: the fitted slope over the steady part, times its length.
    fd_growth = slopes["fds"] * hours
    if fd_growth > args.max_fd_growth:
        failures.append(f"fds grew by {fd_growth:.0f} over {hours * 60:.0f} min (slope {slopes['fds']:.1f}/h)")
    if slopes["threads"] * hours > 1.5:
        failures.append(f"threads grew (slope {slopes['threads']:.2f}/h)")
    if slopes["db_connections"] * hours > 1.5:
        failures.append(f"database connections grew (slope {slopes['db_connections']:.2f}/h)")
    if slopes["rss_mb"] > args.max_rss_growth:
        failures.append(f"RSS grew {slopes['rss_mb']:.1f} MB/h after warm-up (bound {args.max_rss_growth:g} MB/h)")
    rate = mean["probes_per_s"]
    if rate < 0.95 * planned:
        failures.append(f"probe rate {rate:.1f}/s below plan {planned:.1f}/s")
    if any(r["reloads_ok"] != 1 for r in steady) or (steady and steady[-1]["reload_failures"]):
        failures.append("a reload failed")
    if args.max_lag_p99_ms and lag_p99_overall is not None and lag_p99_overall > args.max_lag_p99_ms:
        failures.append(f"scheduler lag p99 {lag_p99_overall:.1f} ms after warm-up (bound {args.max_lag_p99_ms:g} ms)")
    if page_errors:
        failures.append(f"{len(page_errors)} scrapes or page loads failed, first: {page_errors[0]}")
    summary["failures"] = failures
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs main()'s cleanup: stackwatch and the target server stop too


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
