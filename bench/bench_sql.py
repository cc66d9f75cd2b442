"""Benchmark SQL and Algorand probing, and show that hung databases do not delay HTTP probes.

    .venv/bin/python bench/bench_sql.py [--window 45]

Phases, each a fresh stackwatch process pinned to CPU 0, at a 15 s interval (plus an
HTTP-only baseline and, last, 50 Algorand targets beside the same 100 HTTP ones, against the
fake algod + indexer in a process of its own on CPU 1: node status, one account, one asset with
a holder, one transaction, indexer health -- 7 to 9 API calls per probe):

  A. 50 SQL targets (17 PostgreSQL, 17 MariaDB, 16 SQLite; 3 custom queries each) plus 100
     HTTP targets, 20 of which answer after an injected 50 ms delay;
  B. the same plus 10 SQL targets pointing at a silent TCP listener that accepts and never
     answers (a hung database), each using its whole 5 s timeout on every probe.

Reports per phase: CPU-ms per SQL probe (phase A: SQL CPU is isolated by subtracting an
HTTP-only baseline run), scheduler lag p99 (which includes waiting for one of the 16 SQL
threads), and the HTTP probes' latency error on the delayed targets.  The claim to check: the
HTTP figures of phase B match phase A.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIA = "mysql+pymysql://root@127.0.0.1:3306/test"
QUERIES = {
    "pg": ["SELECT count(*) AS n FROM information_schema.tables", "SELECT 42 AS n",
           "SELECT count(*) AS n FROM pg_stat_activity"],
    "maria": ["SELECT count(*) AS n FROM information_schema.tables", "SELECT 42 AS n",
              "SELECT count(*) AS n FROM information_schema.processlist"],
    "sqlite": ["SELECT count(*) AS n FROM models", "SELECT 42 AS n", "SELECT max(id) AS n FROM models"],
}


def silent_listener() -> int:
    """A TCP port that accepts connections and never says anything (a hung database)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


FAKE_ALGOD = r'''
import asyncio, sys
from stackwatch.demo.fakealgod import FakeAlgorand
async def main():
    fake = FakeAlgorand("bench-token", record=False)
    await fake.start(int(sys.argv[1]), int(sys.argv[2]))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
'''


def algorand_config(tmp: Path, ports: list[int], algod: int, indexer: int) -> Path:
    from stackwatch.demo.fakealgod import ADMIN, CREATE_TXID, PAM_ASSET

    path = config(tmp, ports, sql=False, hung_port=None)
    lines = path.read_text().splitlines()
    for i in range(50):
        lines.append(f"  - {{name: chain{i}, kind: algorand, algod_url: 'http://127.0.0.1:{algod}', "
                     f"algod_token: '${{BENCH_ALGOD_TOKEN}}', indexer_url: 'http://127.0.0.1:{indexer}', "
                     f"network: testnet-v1.0, accounts: [{{alias: admin, address: {ADMIN}, min_balance_algo: 1}}], "
                     f"assets: [{{alias: token, id: {PAM_ASSET}, creator: {ADMIN}, holders: [admin]}}], "
                     f"transactions: [{{alias: create, txid: {CREATE_TXID}}}]}}")
    out = tmp / "algorand.yml"
    out.write_text("\n".join(lines) + "\n")
    return out


def config(tmp: Path, ports: list[int], sql: bool, hung_port: int | None) -> Path:
    sqlite_path = tmp / "models.db"
    if not sqlite_path.exists():
        import sqlite3

        db = sqlite3.connect(sqlite_path)
        db.execute("CREATE TABLE models (id INTEGER PRIMARY KEY, status TEXT)")
        db.executemany("INSERT INTO models (status) VALUES (?)", [("active",)] * 63)
        db.commit()
        db.close()
    lines = ["defaults: {interval: 15s, timeout: 5s}", "targets:"]
    for i in range(100):
        path = f"/delay/{i}" if i < bench.DELAYED_TARGETS else f"/health/{i}"
        lines.append(f"  - {{name: t{i}, kind: http, url: 'http://127.0.0.1:{ports[i % len(ports)]}{path}'}}")
    if sql:
        for i in range(50):
            flavour, url = (("pg", PG), ("maria", MARIA), ("sqlite", f"sqlite:///{sqlite_path}"))[i % 3]
            qs = ", ".join(f"{{name: q{j}, sql: '{q}', values: [n]}}" for j, q in enumerate(QUERIES[flavour]))
            lines.append(f"  - {{name: db{i}, kind: sql, url: '{url}', namespace: bench, queries: [{qs}]}}")
    if hung_port:
        for i in range(10):
            lines.append(f"  - {{name: hung{i}, kind: sql, url: 'postgresql+psycopg://postgres@127.0.0.1:{hung_port}/x'}}")
    path = tmp / f"sql-{sql}-{hung_port}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(cfg: Path, window: float) -> dict[str, float]:
    port = bench.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*bench.pin(0), sys.executable, "-m", "stackwatch", "--config.file", str(cfg),
                             "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error"],
                            env={**os.environ, "BENCH_ALGOD_TOKEN": "bench-token"})
    try:
        for _ in range(200):
            try:
                bench.get(base + "/-/ready", 1)
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(16)
        m0 = bench.parse_metrics(bench.get(base + "/metrics").decode())
        cpu0, t0 = bench.cpu_seconds(proc.pid), time.monotonic()
        lag0 = {lab["le"]: v for lab, v in m0["stackwatch_scheduler_lag_seconds_bucket"]}
        errors: list[float] = []
        seen: dict[str, float] = {}
        while time.monotonic() - t0 < window:
            m = bench.parse_metrics(bench.get(base + "/metrics").decode())
            last_run = {lab["target"]: v for lab, v in m["stackwatch_probe_last_run_timestamp_seconds"]}
            for lab, v in m["stackwatch_probe_last_duration_seconds"]:
                t = lab["target"]
                if t.startswith("t") and int(t[1:]) < bench.DELAYED_TARGETS and last_run.get(t) != seen.get(t):
                    seen[t] = last_run.get(t, 0)
                    errors.append((v - bench.DELAY) * 1000)
            time.sleep(1)
        cpu1, t1 = bench.cpu_seconds(proc.pid), time.monotonic()
        m1 = bench.parse_metrics(bench.get(base + "/metrics").decode())
        count0 = {(lab["target"], lab["result"]): v for lab, v in m0["stackwatch_probes_total"]}
        by_kind: dict[str, float] = {"http": 0, "sql": 0, "algorand": 0}
        failures = {"http": 0.0, "sql": 0.0, "algorand": 0.0}
        for lab, v in m1["stackwatch_probes_total"]:
            kind = "http" if lab["target"].startswith("t") else "algorand" if lab["target"].startswith("chain") else "sql"
            by_kind[kind] += v - count0.get((lab["target"], lab["result"]), 0)
            if lab["result"] == "failure":
                failures[kind] += v - count0.get((lab["target"], lab["result"]), 0)
        lag = [(lab, v - lag0.get(lab["le"], 0)) for lab, v in m1["stackwatch_scheduler_lag_seconds_bucket"]]
        return {"cpu_s": cpu1 - cpu0, "seconds": t1 - t0, "http_probes": by_kind["http"], "sql_probes": by_kind["sql"],
                "algorand_probes": by_kind["algorand"], "algorand_failures": failures["algorand"],
                "http_failures": failures["http"], "sql_failures": failures["sql"],
                "scheduler_lag_p99_ms": bench.histogram_quantile(0.99, lag) * 1000,
                "http_latency_error_p50_ms": bench.pct(errors, 0.5), "http_latency_error_p99_ms": bench.pct(errors, 0.99),
                "latency_samples": len(errors), "rss_mb": bench.rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=45.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    ports = [bench.free_port() for _ in range(bench.PORTS)]
    server = subprocess.Popen([*bench.pin(1), sys.executable, "-c", bench.TARGET_SERVER, ",".join(map(str, ports)),
                               str(bench.DELAY)], stdout=subprocess.PIPE, text=True)
    assert server.stdout and server.stdout.readline().strip() == "ready"
    hung = silent_listener()
    out: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "window_s": args.window}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            http_only = measure(config(tmp, ports, sql=False, hung_port=None), args.window)
            phase_a = measure(config(tmp, ports, sql=True, hung_port=None), args.window)
            phase_b = measure(config(tmp, ports, sql=True, hung_port=hung), args.window)
            algod, indexer = bench.free_port(), bench.free_port()
            fake = subprocess.Popen([*bench.pin(1), sys.executable, "-c", FAKE_ALGOD, str(algod), str(indexer)],
                                    stdout=subprocess.PIPE, text=True)
            try:
                assert fake.stdout and fake.stdout.readline().strip() == "ready"
                phase_algorand = measure(algorand_config(tmp, ports, algod, indexer), args.window)
            finally:
                fake.terminate()
    finally:
        server.terminate()
    http_cpu_per_probe = http_only["cpu_s"] / max(1, http_only["http_probes"])
    sql_cpu = phase_a["cpu_s"] - http_cpu_per_probe * phase_a["http_probes"]
    algorand_cpu = phase_algorand["cpu_s"] - http_cpu_per_probe * phase_algorand["http_probes"]
    out.update(http_only=http_only, phase_a=phase_a, phase_b_hung=phase_b, algorand=phase_algorand,
               sql_cpu_ms_per_probe=1000 * sql_cpu / max(1, phase_a["sql_probes"]),
               algorand_cpu_ms_per_probe=1000 * algorand_cpu / max(1, phase_algorand["algorand_probes"]),
               http_cpu_ms_per_probe=1000 * http_cpu_per_probe)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
