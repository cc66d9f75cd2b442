"""Heartbeat pushes: how many acknowledged reports a second stackwatch takes, at what latency,
and that none of them is lost when the exporter is killed (-9) and restarted.

    .venv/bin/python bench/push.py --checks 1000 --seconds 20 --clients 64 [--storage-url postgresql+psycopg://...]

``--clients`` connections push as fast as they are answered, round-robin over the checks (each
check stays under its rate limit of 5 a second only when checks x 5 exceeds the rate: with
fewer checks some pushes get 429, which are counted apart).  After the run stackwatch gets
SIGKILL, is started again on the same store, and every check's runs_total must equal the 200s
it got.  Prints (and with --json writes) pushes/s, p50/p99/max latency, 429s, lost reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, pct, stackwatch_version  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def start(cfg: Path, port: int, store: list[str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--web.listen-address",
                             f"127.0.0.1:{port}", *store], env={**os.environ, "HB_TOKEN": TOKEN},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"stackwatch did not start; see {log}")


async def flood(base: str, checks: int, seconds: float, clients: int,
                path: str = "/push/job-{i}", body: bytes = b"") -> tuple[list[int], list[float], int, int]:
    import aiohttp

    acked = [0] * checks
    latencies: list[float] = []
    limited = errors = 0
    stop = time.perf_counter() + seconds
    counter = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter, limited, errors
        while time.perf_counter() < stop:
            i = counter % checks
            counter += 1
            started = time.perf_counter()
            try:
                async with session.post(base + path.format(i=i), data=body) as resp:
                    await resp.read()
                    if resp.status == 200:
                        acked[i] += 1
                        latencies.append(time.perf_counter() - started)
                    elif resp.status == 429:
                        limited += 1
                    else:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return acked, latencies, limited, errors


def runs_total(base: str, checks: int) -> dict[int, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('stackwatch_heartbeat_runs_total{target="job-'):
            name = line.split('"')[1]
            out[int(name[4:])] = float(line.rsplit(" ", 1)[1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checks", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--storage-url", default=None, help="PostgreSQL instead of the SQLite file")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pushgateway", action="store_true",
                    help="also time Prometheus's Pushgateway (Debian's prometheus-pushgateway) with the same client")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stackwatch-push-"))
    cfg = tmp / "stackwatch.yml"
    cfg.write_text("targets:\n" + "".join(
        f'  - {{name: job-{i}, kind: heartbeat, interval: 5s, schedule: {{every: 1h}}, token: "${{HB_TOKEN}}"}}\n'
        for i in range(args.checks)))
    store = ["--storage.url", args.storage_url] if args.storage_url else ["--storage.path", str(tmp / "state.db")]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(cfg, port, store, tmp / "stackwatch.log")
    try:
        acked, latencies, limited, errors = asyncio.run(flood(base, args.checks, args.seconds, args.clients))
    finally:
        proc.kill()
        proc.wait()
    proc = start(cfg, port, store, tmp / "stackwatch.log")
    try:
        deadline = time.monotonic() + 60
        counted: dict[int, float] = {}
        while time.monotonic() < deadline:
            counted = runs_total(base, args.checks)
            if len(counted) == args.checks:
                break
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait()
    lost = sum(max(0, acked[i] - int(counted.get(i, 0))) for i in range(args.checks))
    summary = {
        "stackwatch": stackwatch_version(), "store": "postgresql" if args.storage_url else "sqlite",
        "checks": args.checks, "clients": args.clients, "seconds": args.seconds,
        "acknowledged": sum(acked), "pushes_per_second": round(sum(acked) / args.seconds, 1),
        "latency_ms": {"p50": round(pct(latencies, 0.5) * 1000, 2), "p99": round(pct(latencies, 0.99) * 1000, 2),
                       "max": round(max(latencies) * 1000, 2)} if latencies else None,
        "rate_limited": limited, "errors": errors, "lost_after_kill_9": lost,
        "checks_counted_after_restart": len(counted), "cpus": os.cpu_count(),
    }
    if args.pushgateway:
        summary["pushgateway"] = pushgateway(args, tmp)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if lost or len(counted) != args.checks:
        raise SystemExit(1)


def pushgateway(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """The same flood against the Pushgateway: one group per check (POST /metrics/job/NAME), a
    one-line body.  It keeps pushes in memory and writes its persistence file every 5 minutes, so
    a 200 there is not durable; the figure is a ceiling for an HTTP push endpoint on this machine."""
    import shutil

    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        return {"error": "prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)"}
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stderr.split("\n")[0] or \
        subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}",
                             f"--persistence.file={tmp / 'pushgateway.db'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        acked, latencies, limited, errors = asyncio.run(flood(
            f"http://127.0.0.1:{port}", args.checks, args.seconds, args.clients, "/metrics/job/job-{i}",
            b"job_last_success_timestamp_seconds 1.7e9\n"))
    finally:
        proc.terminate()
        proc.wait()
    return {"version": version.strip(), "acknowledged": sum(acked),
            "pushes_per_second": round(sum(acked) / args.seconds, 1),
            "latency_ms": {"p50": round(pct(latencies, 0.5) * 1000, 2), "p99": round(pct(latencies, 0.99) * 1000, 2),
                           "max": round(max(latencies) * 1000, 2)} if latencies else None,
            "errors": errors}


if __name__ == "__main__":
    main()
