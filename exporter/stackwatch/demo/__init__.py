"""`stackwatch demo`: a simulated platform with the seed documents' failures, and stackwatch on it.

Everything runs in this one process on loopback ports, with no setup:

* PAM-TALK main platform, healthy, with its health JSON (seed 000);
* PAM-TALK's ESG backend, refusing connections (seed 000), and its database URL left empty;
* the trading backend on its own port, failing every 4th request and slow on every 3rd (seed 004),
  and its SQLite database whose ``strategies`` table lacks ``strategy_type``;
* PAM-TALK's business database (users by role, products, eco points) in SQLite;
* the energy pool overview, one partner low on energy (seed 001);
* AI-GO's model counts from a database, an API, a lagging cache, a deployed copy showing 128
  active of 74 and a fallback file stuck at 139, which disagree (seed 002).  The cache is a key in
  Redis when one answers at ``--redis-url`` (default redis://127.0.0.1:6379/0): written without
  an expiry, as the application's bug does, and removed when the demo stops; an HTTP stand-in
  otherwise;
* a fake algod in the seed 000 state: the token does not exist, the admin account holds 0 ALGO;
* two scheduled jobs reporting to heartbeat checks: a model-sync worker on time (the demo
  reports for it every 20 s) and a nightly export whose last run reported a failure;
* a second fake algod for a node runner: an account online in consensus whose participation key
  expires in 1,000 rounds, which has not proposed for three quarters of its absence window, on a
  network that scheduled a protocol upgrade.

With ``--with-prometheus`` it also starts Prometheus and Alertmanager from PATH (Debian's
``prometheus`` and ``prometheus-alertmanager``) with the bundle's rules and routes; alert
notifications are printed to the console by a local Telegram and webhook sink.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from stackwatch import bundle
from stackwatch.demo.fakealgod import (
    ADMIN,
    CREATE_TXID,
    PAM_ASSET,
    PARTICIPANT,
    FakeAlgorand,
    node_runner_state,
    seed_000_state,
)

PAM_TALK_HEALTH = {"status": "healthy", "version": "3.0.0-social", "features": ["social", "esg-points", "rewards"]}
AI_GO_API = {"totalModels": 63, "activeModels": 51, "operationalModels": 49, "degradedModels": 1, "outageModels": 1,
             "avgAvailability": 96.9, "dataSource": "cache"}
MODEL_COUNT_INVARIANTS = ["active <= total", "operational + degraded + outage <= active", "0 <= total <= 200"]
"""The platform's own rules for its model counts (the product has no default invariants)."""
DEMO_ALGOD_TOKEN = "demo-algod-token-" + "d" * 47
DEMO_PUSH_TOKEN = "demo-push-token-" + "e" * 16
DEMO_REDIS_URL = "redis://127.0.0.1:6379/0"


def bound_socket(reserved: frozenset[int] = frozenset()) -> socket.socket:
    """A loopback socket bound now to a port the kernel picked, never one of ``reserved`` (the
    demo's own listen, Prometheus and Alertmanager ports, bound only later): held from here on,
    so no other process can take the port meanwhile (no race between choosing and binding)."""
    for _ in range(100):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        if sock.getsockname()[1] not in reserved:
            return sock
        sock.close()
    raise OSError("no free loopback port")


class Platform:
    """The simulated services (aiohttp apps) and their SQLite databases."""

    def __init__(self, workdir: Path, reserved: frozenset[int] = frozenset(), redis_url: str = ""):
        self.dir = workdir
        self.redis_url = redis_url
        self.redis: Any = None
        """A redis.asyncio client when Redis answered at start: the AI-GO cache lives there."""
        self.socks = {name: bound_socket(reserved) for name in
                      ("main", "trading", "esg", "algod", "indexer", "node", "node_indexer")}
        port = {name: sock.getsockname()[1] for name, sock in self.socks.items()}
        self.main_port, self.trading_port = port["main"], port["trading"]
        # Bound and never listening: connections to it are refused, as to the ESG backend.
        self.esg_port = port["esg"]
        self.algod = FakeAlgorand(DEMO_ALGOD_TOKEN, seed_000_state(DEMO_ALGOD_TOKEN), record=False)
        self.algod_port, self.indexer_port = port["algod"], port["indexer"]
        runner = node_runner_state(DEMO_ALGOD_TOKEN, expires_in_rounds=1_000, rounds_since_seen=30_000)
        runner["upgrade"] = {"rounds": 120_000, "supported": True}
        self.node = FakeAlgorand(DEMO_ALGOD_TOKEN, runner, record=False)
        self.node_port, self.node_indexer_port = port["node"], port["node_indexer"]
        self.cache = {"totalModels": 60, "activeModels": 50, "operationalModels": 48, "degradedModels": 1,
                      "outageModels": 1}
        self.trading_requests = itertools.count(1)
        self.runners: list[web.AppRunner] = []
        self.notifications: list[str] = []
        self.worker: asyncio.Task[None] | None = None
        self.refresher: asyncio.Task[None] | None = None

    # -- databases
    def make_databases(self) -> None:
        trading = sqlite3.connect(self.dir / "trading.db")
        trading.executescript("""
            DROP TABLE IF EXISTS strategies;
            CREATE TABLE strategies (id INTEGER PRIMARY KEY, name TEXT NOT NULL);  -- strategy_type lost in a deploy
            INSERT INTO strategies (name) VALUES ('momentum'), ('mean-reversion');""")
        trading.commit()
        trading.close()
        pam = sqlite3.connect(self.dir / "pamtalk.db")
        pam.executescript("""
            DROP TABLE IF EXISTS users; DROP TABLE IF EXISTS products;
            CREATE TABLE users (id INTEGER PRIMARY KEY, role TEXT, eco_points INTEGER);
            CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT);
            INSERT INTO users (role, eco_points) VALUES ('admin', 1000), ('farmer', 2240), ('consumer', 1000);
            INSERT INTO products (name) VALUES ('rice'), ('apples');""")
        pam.commit()
        pam.close()
        models = sqlite3.connect(self.dir / "aigo.db")
        models.executescript("DROP TABLE IF EXISTS models; CREATE TABLE models (id INTEGER PRIMARY KEY, status TEXT);")
        rows = ["operational"] * 49 + ["degraded"] + ["outage"] + ["retired"] * 12
        models.executemany("INSERT INTO models (status) VALUES (?)", [(r,) for r in rows])
        models.commit()
        models.close()
        (self.dir / "github-fallback.json").write_text(json.dumps({"totalModels": 139, "activeModels": 139}))

    # -- HTTP services
    async def _pam_talk(self, _: web.Request) -> web.Response:
        return web.json_response(PAM_TALK_HEALTH)

    async def _trading(self, _: web.Request) -> web.Response:
        n = next(self.trading_requests)
        if n % 4 == 0:
            return web.json_response({"status": "error", "error": "strategy_type column missing"}, status=500)
        if n % 3 == 0:
            await asyncio.sleep(2.5)
        return web.json_response({"status": "healthy", "version": "2.1.0", "database": {"connected": True}})

    async def _ai_go(self, _: web.Request) -> web.Response:
        return web.json_response(AI_GO_API)

    async def _ai_go_deployed(self, _: web.Request) -> web.Response:
        # What the deployed page showed: "(128/74) : 128", more active models than models.
        return web.json_response({"totalModels": 74, "activeModels": 128, "operationalModels": 49,
                                  "degradedModels": 1, "outageModels": 1})

    def _creep(self) -> dict[str, int]:
        # A cache that lags: it creeps towards the database's numbers and falls back again.
        self.cache["totalModels"] = 60 + (self.cache["totalModels"] - 59) % 4
        return self.cache

    async def _ai_go_cache(self, _: web.Request) -> web.Response:
        return web.json_response(self._creep())

    @property
    def redis_key(self) -> str:
        return f"stackwatch-demo:{self.main_port}:ai-go:stats"

    async def _connect_redis(self) -> None:
        """Use Redis for the AI-GO cache if it answers within a second; the HTTP stand-in if not."""
        if not self.redis_url:
            return
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=1, socket_connect_timeout=1)
        try:
            await client.ping()
            await self._write_cache(client)
        except (RedisError, OSError):
            await client.aclose()
            return
        self.redis = client

    async def _write_cache(self, client: Any) -> None:
        # SET without EX: the key never expires, the application's bug the demo shows
        await client.set(self.redis_key, json.dumps(self._creep()))

    async def _refresh_cache(self) -> None:
        from redis.exceptions import RedisError

        while True:
            await asyncio.sleep(20)
            try:
                await self._write_cache(self.redis)
            except (RedisError, OSError):
                pass  # Redis went away: the probe says so

    async def _energy(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "partners": [
            {"partner_id": "P-001", "level_percent": 82.0, "status": "normal", "unacknowledged_alerts": 0},
            {"partner_id": "P-002", "level_percent": 12.5, "status": "low", "unacknowledged_alerts": 3}]})

    async def _telegram(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = str(body.get("text", ""))
        self.notifications.append(text)
        print(f"\n[telegram sink] {text.splitlines()[0] if text else ''}", flush=True)
        return web.json_response({"ok": True, "result": {"message_id": len(self.notifications), "date": 0,
                                                         "chat": {"id": int(body.get("chat_id", 0)), "type": "group"}}})

    async def _webhook(self, request: web.Request) -> web.Response:
        payload = await request.json()
        for a in payload.get("alerts", []):
            print(f"[webhook sink] {a['status']}: {a['labels'].get('alertname')} {a['labels'].get('target', '')}", flush=True)
        return web.Response(text="ok")

    async def start(self) -> None:
        self.make_databases()
        main = web.Application()
        main.router.add_get("/pam-talk/health", self._pam_talk)
        main.router.add_get("/ai-go/realtime-stats", self._ai_go)
        main.router.add_get("/ai-go/cached-stats", self._ai_go_cache)
        main.router.add_get("/ai-go/deployed-stats", self._ai_go_deployed)
        main.router.add_get("/api/v1/energy/overview", self._energy)
        main.router.add_post("/telegram/bot{token}/sendMessage", self._telegram)
        main.router.add_post("/webhook", self._webhook)
        trading = web.Application()
        trading.router.add_get("/health", self._trading)
        for app, name in ((main, "main"), (trading, "trading")):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.SockSite(runner, self.socks[name]).start()
            self.runners.append(runner)
        await self.algod.start_on(self.socks["algod"], self.socks["indexer"])
        await self.node.start_on(self.socks["node"], self.socks["node_indexer"])
        await self._connect_redis()
        if self.redis is not None:
            self.refresher = asyncio.get_running_loop().create_task(self._refresh_cache())

    async def stop(self) -> None:
        if self.redis is not None:
            from redis.exceptions import RedisError

            if self.refresher is not None:
                self.refresher.cancel()
            try:
                await self.redis.delete(self.redis_key)
            except (RedisError, OSError):
                pass
            await self.redis.aclose()
        await self.algod.stop()
        await self.node.stop()
        if self.worker is not None:
            self.worker.cancel()
        for r in self.runners:
            await r.cleanup()
        for sock in self.socks.values():
            sock.close()

    def start_worker(self, exporter_url: str) -> None:
        """The simulated jobs: the nightly export reports a failed run once, the model-sync worker
        reports success every 20 s."""
        async def report() -> None:
            import aiohttp

            headers = {"Authorization": f"Bearer {DEMO_PUSH_TOKEN}"}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                while True:  # the nightly export's last run: it failed
                    try:
                        async with session.post(f"{exporter_url}/push/nightly-export/1", headers=headers,
                                                data=b"export failed: disk full on /var/backups") as resp:
                            await resp.read()
                        break
                    except (aiohttp.ClientError, TimeoutError):
                        await asyncio.sleep(1)  # the exporter is not listening yet
                while True:
                    try:
                        async with session.post(f"{exporter_url}/push/model-sync", headers=headers,
                                                data=b"synced 63 models") as resp:
                            await resp.read()
                    except (aiohttp.ClientError, TimeoutError):
                        await asyncio.sleep(1)  # the exporter is not listening yet
                        continue
                    await asyncio.sleep(20)
        self.worker = asyncio.get_running_loop().create_task(report())

    # -- the stackwatch config that watches it
    def _cache_source(self, main: str, api_fields: dict[str, str]) -> dict[str, Any]:
        if self.redis is None:
            return {"name": "cache", "priority": 3, "http": {"url": f"{main}/ai-go/cached-stats", "fields": api_fields}}
        fields = {name: {"key": self.redis_key, "path": path} for name, path in api_fields.items()}
        return {"name": "cache", "priority": 3,
                "redis": {"url": self.redis_url, "fields": fields, "max_age": {self.redis_key: "2m"}}}

    def config(self) -> dict[str, Any]:
        main = f"http://127.0.0.1:{self.main_port}"
        d = self.dir
        models_sql = ("SELECT count(*) AS total, sum(status != 'retired') AS active, "
                      "sum(status = 'operational') AS operational, sum(status = 'degraded') AS degraded, "
                      "sum(status = 'outage') AS outage FROM models")
        api_fields = {"total": "$.totalModels", "active": "$.activeModels", "operational": "$.operationalModels",
                      "degraded": "$.degradedModels", "outage": "$.outageModels"}
        return {
            "defaults": {"interval": "5s", "timeout": "3s", "labels": {"env": "demo"}},
            "targets": [
                {"name": "pam-talk", "kind": "http", "url": f"{main}/pam-talk/health",
                 "assertions": ["$.status == healthy", "len($.features) > 0"],
                 "info": {"version": "$.version", "feature": "$.features"}},
                {"name": "esg-backend", "kind": "http", "url": f"http://127.0.0.1:{self.esg_port}/health"},
                {"name": "trading-backend", "kind": "http", "url": f"http://127.0.0.1:{self.trading_port}/health",
                 "assertions": ["$.status == healthy"]},
                {"name": "energy-overview", "kind": "json", "url": f"{main}/api/v1/energy/overview",
                 "namespace": "energy", "metrics": [
                     {"name": "pool_level_percent", "help": "Energy pool fill level per partner.",
                      "path": "$.partners[*]", "value": "$.level_percent", "labels": {"partner_id": "$.partner_id"}},
                     {"name": "unacknowledged_alerts", "help": "Energy alerts nobody acknowledged.",
                      "path": "$.partners[*]", "value": "$.unacknowledged_alerts",
                      "labels": {"partner_id": "$.partner_id"}}]},
                {"name": "pamtalk-db", "kind": "sql", "url": f"sqlite:///{d / 'pamtalk.db'}", "namespace": "pamtalk",
                 "queries": [
                     {"name": "users", "help": "Users by role.", "sql": "SELECT role, count(*) AS n FROM users GROUP BY role",
                      "labels": ["role"], "values": ["n"]},
                     {"name": "products", "help": "Products listed.", "sql": "SELECT count(*) AS n FROM products",
                      "values": ["n"]},
                     {"name": "eco_points", "help": "Eco points held by all users.",
                      "sql": "SELECT sum(eco_points) AS p FROM users", "values": ["p"], "min_interval": "1m"}]},
                {"name": "esg-db", "kind": "sql", "url": ""},
                {"name": "trading-db", "kind": "sql", "url": f"sqlite:///{d / 'trading.db'}",
                 # the deploy lost a column, and the table of the release it skipped was never created
                 "schema": {"tables": [{"name": "strategies",
                                        "columns": ["id", "name", {"name": "strategy_type", "type": "varchar"}]},
                                       {"name": "strategy_runs", "columns": ["id", "strategy_id"]}]}},
                {"name": "ai-go-models", "kind": "consistency", "fields": list(api_fields),
                 "tolerance": {"absolute": 10}, "invariants": MODEL_COUNT_INVARIANTS, "sources": [
                     {"name": "database", "priority": 1,
                      "sql": {"url": f"sqlite:///{d / 'aigo.db'}", "query": models_sql}},
                     {"name": "api", "priority": 2,
                      "http": {"url": f"{main}/ai-go/realtime-stats", "fields": api_fields, "served_path": "$.dataSource"}},
                     self._cache_source(main, api_fields),
                     {"name": "deployed", "priority": 5,
                      "http": {"url": f"{main}/ai-go/deployed-stats", "fields": api_fields}},
                     {"name": "github-fallback", "priority": 4,
                      "file": {"path": str(d / "github-fallback.json"),
                               "fields": {"total": "$.totalModels", "active": "$.activeModels"}}}]},
                {"name": "pam-talk-chain", "kind": "algorand", "algod_url": f"http://127.0.0.1:{self.algod_port}",
                 "algod_token": "${DEMO_ALGOD_TOKEN}", "indexer_url": f"http://127.0.0.1:{self.indexer_port}",
                 "network": "testnet-v1.0",
                 "accounts": [{"alias": "admin", "address": ADMIN, "min_balance_algo": 1}],
                 "assets": [{"alias": "pam-token", "id": PAM_ASSET, "creator": ADMIN, "holders": ["admin"]}],
                 "transactions": [{"alias": "pam-token-create", "txid": CREATE_TXID}]},
                # a worker that reports every 20 s, and a nightly export whose last run reported a
                # failure (exit code 1) at start (the demo sends both reports)
                {"name": "model-sync", "kind": "heartbeat", "schedule": {"every": "30s"}, "grace": "15s",
                 "token": "${DEMO_PUSH_TOKEN}"},
                {"name": "nightly-export", "kind": "heartbeat",
                 "schedule": {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}, "grace": "30m", "max_run_time": "2h",
                 "token": "${DEMO_PUSH_TOKEN}"},
                {"name": "validator-node", "kind": "algorand", "algod_url": f"http://127.0.0.1:{self.node_port}",
                 "algod_token": "${DEMO_ALGOD_TOKEN}", "algod_admin_token": "${DEMO_ALGOD_ADMIN_TOKEN}",
                 "network": "testnet-v1.0",
                 "accounts": [{"alias": "staking", "address": PARTICIPANT, "participating": True,
                               "incentive_eligible": True}]},
            ],
        }


def _start_prometheus(workdir: Path, listen: str, platform: Platform, prom_port: int,
                      am_port: int) -> list[subprocess.Popen[bytes]]:
    prom_bin = shutil.which("prometheus")
    am_bin = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not prom_bin or not am_bin:
        raise SystemExit("--with-prometheus needs prometheus and prometheus-alertmanager on PATH "
                         "(apt-get install prometheus prometheus-alertmanager)")
    main = f"http://127.0.0.1:{platform.main_port}"
    am_cfg = bundle.render_alertmanager(workdir / "alertmanager.yml", "0:demo-token", f"{main}/telegram",
                                        f"{main}/webhook", fast=True, email=False)
    rules = [str(bundle.bundle_dir("prometheus") / "rules" / "stackwatch-recording.yml"),
             str(bundle.scaled_alert_rules(workdir / "alerts-demo.yml", divisor=10))]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "5s", "scrape_timeout": "4s", "evaluation_interval": "5s"},
        "rule_files": rules,
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "stackwatch", "static_configs": [{"targets": [listen]}]}]}))
    log = open(workdir / "prometheus-alertmanager.log", "ab")
    procs = [
        subprocess.Popen([am_bin, f"--config.file={am_cfg}", f"--storage.path={workdir / 'am-data'}",
                          f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], stdout=log, stderr=log),
        subprocess.Popen([prom_bin, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'prom-data'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=log),
    ]
    print(f"  Prometheus    http://127.0.0.1:{prom_port}/alerts\n  Alertmanager  http://127.0.0.1:{am_port}/")
    return procs


def _check_free(host: str, port: int, flag: str) -> None:
    """OSError naming the flag when nothing could listen on host:port now."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} ({flag}): {exc.strerror}") from None


async def run(listen: str, workdir: Path | None, with_prometheus: bool, prom_port: int = 9090,
              am_port: int = 9093, redis_url: str = DEMO_REDIS_URL) -> None:
    import os

    from stackwatch.app import Exporter
    from stackwatch.kinds import parse_config
    from stackwatch.server import serve

    host, _, port = listen.rpartition(":")
    # Ports first: a busy one is an error before anything starts or any banner is printed.
    _check_free(host or "0.0.0.0", int(port), "--web.listen-address")
    if with_prometheus:
        _check_free("127.0.0.1", prom_port, "--prometheus-port")
        _check_free("127.0.0.1", am_port, "--alertmanager-port")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="stackwatch-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    reserved = frozenset({int(port), prom_port, am_port} if with_prometheus else {int(port)})
    platform = Platform(workdir, reserved, redis_url)
    await platform.start()
    cfg_path = workdir / "stackwatch-demo.yml"
    cfg_path.write_text("# Written by `stackwatch demo`.\n" + yaml.safe_dump(platform.config(), sort_keys=False))
    os.environ["DEMO_ALGOD_TOKEN"] = DEMO_ALGOD_TOKEN  # the config reads it as ${DEMO_ALGOD_TOKEN}
    os.environ["DEMO_ALGOD_ADMIN_TOKEN"] = DEMO_ALGOD_TOKEN + "-admin"  # the fake node's admin token
    os.environ["DEMO_PUSH_TOKEN"] = DEMO_PUSH_TOKEN  # the heartbeats' push token
    config = parse_config(cfg_path.read_text(), str(cfg_path))
    shown = f"{host or '127.0.0.1'}:{port}"
    print(f"stackwatch demo: {len(config.targets)} targets watching a simulated platform\n"
          f"  status page   http://{shown}/\n  metrics       http://{shown}/metrics\n"
          f"  debug a probe http://{shown}/probe?target=trading-backend&debug=true\n"
          f"  config        {cfg_path}", flush=True)
    procs = _start_prometheus(workdir, shown, platform, prom_port, am_port) if with_prometheus else []
    exporter = Exporter(cfg_path, config)
    if with_prometheus:
        exporter.remotes.prometheus = f"http://127.0.0.1:{prom_port}"
        exporter.remotes.alertmanager = f"http://127.0.0.1:{am_port}"
    platform.start_worker(f"http://127.0.0.1:{port}" if host in ("", "0.0.0.0", "::", "[::]")
                          else f"http://{host}:{port}")
    try:
        await serve(exporter, listen)
    finally:
        for p in procs:
            p.terminate()
        await platform.stop()
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="stackwatch demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--web.listen-address", dest="listen", default="127.0.0.1:9938")
    p.add_argument("--dir", type=Path, help="keep the demo's config and databases here (default: a temp dir)")
    p.add_argument("--with-prometheus", action="store_true",
                   help="also start Prometheus (:9090) and Alertmanager (:9093) with the bundle's rules and routes")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--alertmanager-port", type=int, default=9093)
    p.add_argument("--redis-url", default=DEMO_REDIS_URL,
                   help="a Redis for the AI-GO cache (one key, removed at stop; used only if it answers; "
                        "'' for none; default %(default)s)")
    p.add_argument("--log.level", dest="log_level", default="warn", choices=["debug", "info", "warn", "error"])
    args = p.parse_args(argv)
    from stackwatch.logsetup import setup_logging

    setup_logging("warning" if args.log_level == "warn" else args.log_level, "logfmt")
    try:
        asyncio.run(run(args.listen, args.dir, args.with_prometheus, args.prometheus_port, args.alertmanager_port,
                        args.redis_url))
    except OSError as exc:
        print(f"stackwatch demo: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
