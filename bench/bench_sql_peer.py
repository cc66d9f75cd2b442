"""stackwatch's SQL probes beside Debian's prometheus-sql-exporter (Go), same work, one machine.

    .venv/bin/python bench/bench_sql_peer.py [--rounds 3] [--window 60] [--json bench/results-sql-peer.json]

Both exporters run the same three custom queries against the same 20 PostgreSQL and 20 MariaDB
targets (each target its own connection to the machine's servers) every 15 s, one exporter at a
time, pinned to CPU 0, alternating for --rounds rounds.  Per round and exporter, after a warm-up:

* CPU-ms per query: the process's user+system CPU over the window / the queries it ran
  (targets x 3 x runs, counted from what each exported);
* statements per target-run counted by MariaDB itself (global `Questions`: every statement a
  client sent) and transactions per target-run counted by PostgreSQL (`pg_stat_database`
  xact_commit + xact_rollback of the database), with nothing else connected;
* RSS at the end;
* the values of the two deterministic queries compared between the exporters;
* stackwatch with no targets over the same window (its fixed cost: GC keeper, timers), and its
  CPU per query above that.

stackwatch runs with `saturation: false` (the peer has no such check) unless --saturation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import cpu_seconds, free_port, get, pin, rss_mb, stackwatch_version  # noqa: E402

TARGETS = 20  # per server
INTERVAL = 15.0
QUERIES = [("tables", "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'information_schema'"),
           ("answer", "SELECT 42 AS n"),
           ("sessions", "SELECT count(*) AS n FROM information_schema.tables WHERE table_name LIKE 'a%'")]


def admin_counts() -> tuple[int, int]:
    """(MariaDB Questions, PostgreSQL transactions of database test), read by this process."""
    import psycopg
    import pymysql

    m = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test")
    try:
        with m.cursor() as c:
            c.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            questions = int(c.fetchone()[1])
    finally:
        m.close()
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as p:
        xacts = p.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'test'").fetchone()[0]
    return questions, int(xacts)


def stackwatch_config(path: Path, saturation: bool) -> None:
    lines = ["targets:"]
    for server, url in (("pg", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        ("maria", "mysql+pymysql://root@127.0.0.1:3306/test")):
        for i in range(TARGETS):
            lines += [f"  - name: {server}-{i}", "    kind: sql", f"    url: {url}", f"    interval: {INTERVAL:g}s",
                      "    timeout: 5s", f"    saturation: {'true' if saturation else 'false'}",
                      "    namespace: bench", "    queries:"]
            lines += [f"      - {{name: {name}, sql: \"{sql}\", values: [n]}}" for name, sql in QUERIES]
    path.write_text("\n".join(lines) + "\n")


def peer_config(path: Path) -> None:
    # One job per target: the peer labels series by job, database, host and user, so twenty
    # connections of one job to the same database would export the same series twenty times.
    doc = {"jobs": []}
    for server, url in (("pg", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
                        ("maria", "mysql://root@tcp(127.0.0.1:3306)/test")):
        for i in range(TARGETS):
            doc["jobs"].append({"name": f"{server}-{i}", "interval": f"{INTERVAL:g}s", "connections": [url],
                                "queries": [{"name": name, "help": name, "values": ["n"], "query": sql}
                                            for name, sql in QUERIES]})
    path.write_text(json.dumps(doc))  # JSON is YAML


def measure(name: str, cmd: list[str], metrics_url: str, window: float, warmup: float) -> dict[str, object]:
    proc = subprocess.Popen([*pin(0), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(warmup)
        q0, x0 = admin_counts()
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_seconds(proc.pid), time.monotonic()
        q1, x1 = admin_counts()
        rss = rss_mb(proc.pid)
        body = get(metrics_url).decode()
    finally:
        proc.terminate()
        proc.wait(20)
    runs = TARGETS * (t1 - t0) / INTERVAL  # target-runs per server in the window
    queries = 2 * runs * len(QUERIES)
    values: dict[str, list[float]] = {}
    for line in body.splitlines():
        name = line.partition("{")[0].partition(" ")[0]
        if name in ("stackwatch_bench_answer", "stackwatch_bench_tables", "sql_answer", "sql_tables"):
            key = name.rsplit("_", 1)[-1]
            values[key] = sorted(set(values.get(key, [])) | {float(line.rsplit(" ", 1)[1])})
    return {"exporter": name, "window_s": round(t1 - t0, 1), "cpu_s": round(c1 - c0, 3),
            "cpu_ms_per_query": (c1 - c0) * 1000 / queries, "mariadb_statements_per_target_run": (q1 - q0) / runs,
            "postgresql_transactions_per_target_run": (x1 - x0) / runs, "rss_mb": round(rss, 1), "values": values}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--saturation", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    peer = shutil.which("prometheus-sql-exporter")
    if not peer:
        raise SystemExit("prometheus-sql-exporter is not installed (apt-get install prometheus-sql-exporter)")
    # The Debian build prints an empty version string: the package's version says which release it is.
    version = subprocess.run(["dpkg-query", "-W", "-f", "prometheus-sql-exporter ${Version}",
                              "prometheus-sql-exporter"], capture_output=True, text=True).stdout.strip().splitlines()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                  "python": platform.python_version(), "cpus": os.cpu_count(),
                                  "stackwatch": stackwatch_version(), "peer": version[0] if version else "?",
                                  "targets": 2 * TARGETS, "queries_per_target": len(QUERIES), "interval_s": INTERVAL,
                                  "saturation": args.saturation, "rounds": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sw_cfg, peer_cfg = tmp / "stackwatch.yml", tmp / "peer.yml"
        stackwatch_config(sw_cfg, args.saturation)
        idle_cfg = tmp / "idle.yml"
        idle_cfg.write_text("targets: []\n")
        peer_config(peer_cfg)
        for r in range(args.rounds):
            port = free_port()
            sw = measure("stackwatch", [sys.executable, "-m", "stackwatch", "--config.file", str(sw_cfg),
                                        "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error",
                                        "--storage.path", str(tmp / "state.db")],
                         f"http://127.0.0.1:{port}/metrics", args.window, args.warmup)
            port = free_port()
            go = measure("prometheus-sql-exporter", [peer, "-config.file", str(peer_cfg),
                                                     "-web.listen-address", f"127.0.0.1:{port}"],
                         f"http://127.0.0.1:{port}/metrics", args.window, args.warmup)
            ratio = sw["cpu_ms_per_query"] / go["cpu_ms_per_query"] if go["cpu_ms_per_query"] else float("nan")
            # stackwatch with no targets over the same window: what it spends whatever it probes (GC
            # keeper, timers); subtracted, the CPU the queries themselves cost it.
            port = free_port()
            idle = measure("stackwatch-idle", [sys.executable, "-m", "stackwatch", "--config.file", str(idle_cfg),
                                               "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "error",
                                               "--storage.path", str(tmp / "idle.db")],
                           f"http://127.0.0.1:{port}/metrics", args.window, args.warmup)
            marginal = (float(sw["cpu_s"]) - float(idle["cpu_s"])) * float(sw["cpu_ms_per_query"]) / float(sw["cpu_s"])
            results["rounds"].append({"stackwatch": sw, "peer": go, "cpu_ratio": ratio,
                                      "stackwatch_idle_cpu_s": idle["cpu_s"],
                                      "stackwatch_cpu_ms_per_query_above_idle": marginal,
                                      "cpu_ratio_above_idle": marginal / go["cpu_ms_per_query"] if go["cpu_ms_per_query"] else None})
            print(f"round {r + 1}: stackwatch {sw['cpu_ms_per_query']:.3f} CPU-ms/query, "
                  f"{sw['mariadb_statements_per_target_run']:.1f} MariaDB statements and "
                  f"{sw['postgresql_transactions_per_target_run']:.1f} PostgreSQL transactions per target-run, "
                  f"RSS {sw['rss_mb']} MB; peer {go['cpu_ms_per_query']:.3f} CPU-ms/query, "
                  f"{go['mariadb_statements_per_target_run']:.1f} / {go['postgresql_transactions_per_target_run']:.1f}, "
                  f"RSS {go['rss_mb']} MB; ratio {ratio:.2f}x; values {sw['values']} vs {go['values']}; "
                  f"stackwatch idle {idle['cpu_s']} CPU-s in the window: {marginal:.3f} CPU-ms/query above it "
                  f"({marginal / go['cpu_ms_per_query']:.2f}x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
