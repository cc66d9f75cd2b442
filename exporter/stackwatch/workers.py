"""One process per core: ``stackwatch --workers N`` runs N exporters, each probing one hash shard.

Why processes: a probe's CPU is Python's (one core per interpreter); a machine with N cores
runs N times as many probes with N processes.  Why one endpoint per shard, not one merged
``/metrics``: the text format wants each family's lines together, so a merge would have to
parse and regroup every worker's body (hundreds of MB at 100k targets) on every scrape, in one
process again; with an endpoint per shard Prometheus scrapes the shards in parallel, each
shard's body is cached and gzipped by its own process, one shard's failure is one scrape
target's (``up == 0``, StackwatchShardMissing), and the series are the same as with one process
(the ``target`` label; the shard is only in ``instance``).  It is the distributed path
Prometheus already has, on one machine.

The supervisor listens on the given address and serves:

* ``/sd``: the workers for Prometheus's ``http_sd_configs`` (``[{"targets": [...], "labels":
  {"shard": "0"}}, ...]``), so the scrape config does not change with N;
* ``/metrics``: ``stackwatch_worker_up{shard}`` and ``stackwatch_worker_restarts_total{shard}``;
* ``/-/healthy`` and ``/-/ready`` (ready when every worker has started and answers).

Worker i listens on the next port after the supervisor's plus i (9938 -> 9939, 9940, ...);
keep them below the ephemeral port range, since a restarted worker binds its port again.
A worker that exits is started again after a back-off (1 s doubling to 30 s).  SIGHUP is
passed on to every worker (each reloads; a bad config keeps its running one); SIGTERM stops
them all.  Workers get SIGTERM if the supervisor dies (Linux parent-death signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web

from stackwatch.config import ConfigError, Problem
from stackwatch.webconfig import BasicAuthChecker, WebConfig, authorize, check_reload, load_web_config

log = logging.getLogger("stackwatch.workers")

BACKOFF_MAX = 30.0
STOP_GRACE = 10.0


def _parent_death_signal() -> None:  # in the child, before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    index: int
    address: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 1.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, host: str, port: int, count: int, worker_args: Sequence[str], web: WebConfig,
                 web_config_path: str | None = None, allow_no_auth: bool = False):
        self.host, self.port = host, port
        self.workers = [Worker(i, f"{host}:{port + 1 + i}") for i in range(count)]
        self.worker_args = list(worker_args)
        self.web = web
        self.web_config_path = web_config_path
        self.allow_no_auth = allow_no_auth
        self._ssl: ssl.SSLContext | None = None
        self._reloading = asyncio.Lock()
        self._stopping = False
        self._auth = BasicAuthChecker()

    async def reload(self) -> None:
        """SIGHUP: the supervisor reads the web config again (the workers are told too and read
        theirs); a bad file, or one that would turn auth off without --web.config.allow-no-auth,
        keeps the running settings."""
        async with self._reloading:
            if self.web_config_path:
                try:
                    new = await asyncio.to_thread(load_web_config, self.web_config_path)
                    changes = check_reload(self.web, new, self.allow_no_auth)
                    if self._ssl is not None and new.tls is not None:
                        new.ssl_context(into=self._ssl)
                    elif (self._ssl is None) != (new.tls is None):
                        raise ConfigError(new.source, [Problem(
                            "tls_server_config", None, None,
                            "turning TLS on or off needs a restart (the listening socket cannot change)")])
                except ConfigError as exc:
                    log.error("web config reload failed, keeping the running settings", extra={"error": exc.render()})
                except ValueError as exc:
                    log.error("web config reload failed, keeping the running settings", extra={"error": str(exc)})
                else:
                    for change in changes:
                        log.warning("web config reloaded: %s", change)
                    self.web = new
            self.signal_all(signal.SIGHUP)

    def command(self, w: Worker) -> list[str]:
        return [sys.executable, "-m", "stackwatch", *self.worker_args, "--web.listen-address", w.address,
                "--shard.index", str(w.index), "--shard.count", str(len(self.workers))]

    async def _keep_running(self, w: Worker) -> None:
        while not self._stopping:
            w.started_at = time.monotonic()
            w.proc = await asyncio.create_subprocess_exec(*self.command(w), preexec_fn=_parent_death_signal)
            code = await w.proc.wait()
            if self._stopping:
                return
            if time.monotonic() - w.started_at > 60:
                w.backoff = 1.0  # it ran for a while: a fresh failure, not a crash loop
            w.restarts += 1
            log.error("worker exited; starting it again", extra={"shard": w.index, "exit_code": code,
                                                                   "restart_in_seconds": w.backoff})
            await asyncio.sleep(w.backoff)
            w.backoff = min(BACKOFF_MAX, w.backoff * 2)

    def signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def stop(self) -> None:
        self._stopping = True
        self.signal_all(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        if procs:
            _, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in procs], timeout=STOP_GRACE)
            if pending:
                self.signal_all(signal.SIGKILL)
        for w in self.workers:
            if w.task is not None:
                w.task.cancel()

    # ------------------------------------------------------------------ HTTP

    def build_app(self) -> web.Application:
        @web.middleware
        async def guard(request: web.Request, handler: object) -> web.StreamResponse:
            if self.web.auth_required and request.path != "/-/healthy":
                refused = await authorize(self._auth, self.web, request.headers.get("Authorization"))
                if refused is not None:
                    status, headers, text = refused
                    return web.Response(status=status, text=text, headers=headers)
            response = await handler(request)  # type: ignore[operator]
            for name, value in self.web.headers.items():
                response.headers[name] = value
            return response

        app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
        app.router.add_get("/sd", self.sd)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/-/healthy", self.healthy)
        app.router.add_get("/-/ready", self.ready)
        app.router.add_get("/", self.index)
        return app

    async def sd(self, request: web.Request) -> web.Response:
        groups = [{"targets": [w.address], "labels": {"shard": str(w.index)}} for w in self.workers]
        return web.Response(text=json.dumps(groups), content_type="application/json")

    def _alive(self, w: Worker) -> bool:
        return w.proc is not None and w.proc.returncode is None

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# HELP stackwatch_worker_up 1 if the worker process of the shard is running.",
                 "# TYPE stackwatch_worker_up gauge"]
        lines += [f'stackwatch_worker_up{{shard="{w.index}"}} {int(self._alive(w))}' for w in self.workers]
        lines += ["# HELP stackwatch_worker_restarts_total Times the worker of the shard was started again.",
                  "# TYPE stackwatch_worker_restarts_total counter"]
        lines += [f'stackwatch_worker_restarts_total{{shard="{w.index}"}} {w.restarts}' for w in self.workers]
        return web.Response(body=("\n".join(lines) + "\n").encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def ready(self, request: web.Request) -> web.Response:
        not_ready = []
        scheme = "https" if self.web.ssl_context() is not None else "http"
        async with ClientSession(timeout=ClientTimeout(total=2)) as session:
            for w in self.workers:
                try:
                    # /-/healthy: open even behind basic auth, and served only once the worker has started
                    async with session.get(f"{scheme}://{w.address}/-/healthy", ssl=False) as r:
                        if r.status != 200:
                            not_ready.append(w.index)
                except (OSError, asyncio.TimeoutError):
                    not_ready.append(w.index)
        if not_ready:
            return web.Response(status=503, text=f"not ready: shard(s) {', '.join(map(str, not_ready))}\n")
        return web.Response(text="Ready\n")

    async def index(self, request: web.Request) -> web.Response:
        rows = "\n".join(f"shard {w.index}: {w.address} ({'running' if self._alive(w) else 'restarting'}, "
                         f"{w.restarts} restarts)" for w in self.workers)
        return web.Response(text=f"stackwatch supervisor: {len(self.workers)} workers\n{rows}\n"
                                 "Prometheus: http_sd_configs with url /sd\n")


async def supervise(sup: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(sup.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    sup._ssl = sup.web.ssl_context()
    site = web.TCPSite(runner, sup.host, sup.port, ssl_context=sup._ssl)
    await site.start()
    for w in sup.workers:
        w.task = asyncio.create_task(sup._keep_running(w))
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def sighup() -> None:
        task = loop.create_task(sup.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, sighup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("supervisor listening", extra={"address": f"{sup.host}:{sup.port}", "workers": len(sup.workers)})
    try:
        await stop.wait()
    finally:
        await sup.stop()
        await runner.cleanup()


def worker_count(value: str) -> int:
    """``--workers``: a number, or ``auto`` for one per usable CPU."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            return os.cpu_count() or 1
    n = int(value)
    if not 0 <= n <= 256:
        raise ValueError("--workers: expected 0 .. 256 or auto")
    return n
