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
* ``POST /push/...`` (heartbeat reports), passed to a running worker: the workers share the
  state store file, so any of them stores the report and the check's owner exports it;
* ``/-/healthy`` and ``/-/ready`` (ready when every worker runs and has said it listens, by a
  byte on a pipe: no HTTP, so readiness works under every ``client_auth_type`` and password).

It serves through the exporter's own listener (:func:`stackwatch.listener.listen`: connection
cap, head and idle timeouts, accept failures counted, not logged per connection) and the same
basic auth checker, and reads its web config again on SIGHUP with the same rules.

Worker i listens on the next port after the supervisor's plus i (9938 -> 9939, 9940, ...);
keep them below the ephemeral port range, since a restarted worker binds its port again.
A worker that exits, or cannot be started (no file descriptors left, say), is started again
after a back-off (1 s doubling to 30 s), whatever else is happening.  SIGHUP is
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
from typing import Any

from aiohttp import web

from stackwatch.loader import ConfigError, Problem
from stackwatch.listener import Limits, Stats, listen, until_stopped
from stackwatch.webconfig import BasicAuthChecker, WebConfig, authorize, check_reload, load_web_config

log = logging.getLogger("stackwatch.workers")

BACKOFF_MAX = 30.0
PUSH_BODY_MAX = 2048
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
    ready: bool = False
    """The worker wrote its readiness byte since it was (re)started."""
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
        self.stats = Stats()
        self._next_push = 0
        self._client: Any = None

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
        """Start the worker, wait for it to exit, start it again after the back-off; whatever
        goes wrong on the way (no file descriptors left for its pipe, a failed fork) is logged
        and retried after the back-off too: this loop ends only when the supervisor stops."""
        while not self._stopping:
            code: int | str
            try:
                code = await self._run_once(w)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- e.g. EMFILE under a connection flood
                code = f"not started: {type(exc).__name__}: {exc}"
            w.ready = False
            if self._stopping:
                return
            if time.monotonic() - w.started_at > 60:
                w.backoff = 1.0  # it ran for a while: a fresh failure, not a crash loop
            w.restarts += 1
            log.error("worker exited; starting it again", extra={"shard": w.index, "exit_code": code,
                                                                   "restart_in_seconds": w.backoff})
            await asyncio.sleep(w.backoff)
            w.backoff = min(BACKOFF_MAX, w.backoff * 2)

    async def _run_once(self, w: Worker) -> int:
        """One run of the worker; it reports readiness by writing a byte to a pipe (no HTTP, so
        no client certificate or password is involved)."""
        loop = asyncio.get_running_loop()
        w.started_at = time.monotonic()
        w.ready = False
        read_end, write_end = os.pipe()
        reader = None
        try:
            env = {**os.environ, "STACKWATCH_READY_FD": str(write_end)}
            w.proc = await asyncio.create_subprocess_exec(*self.command(w), preexec_fn=_parent_death_signal,
                                                          pass_fds=(write_end,), env=env)
            os.close(write_end)
            write_end = -1
            stream = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream),
                                                        os.fdopen(read_end, "rb", buffering=0))
            read_end = -1
            reader = transport

            async def watch() -> None:
                if await stream.read(1) == b"1":
                    w.ready = True

            watcher = loop.create_task(watch())
            try:
                return await w.proc.wait()
            finally:
                watcher.cancel()
        finally:
            for fd in (read_end, write_end):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if reader is not None:
                reader.close()

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
        if self._client is not None:
            await self._client.close()

    # ------------------------------------------------------------------ HTTP

    def build_app(self) -> web.Application:
        @web.middleware
        async def guard(request: web.Request, handler: object) -> web.StreamResponse:
            if self.web.auth_required and request.path != "/-/healthy" and not request.path.startswith("/push/"):
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
        app.router.add_post("/push/{tail:.+}", self.push)
        return app

    async def push(self, request: web.Request) -> web.Response:
        """Heartbeat pushes, passed to a running worker (they share the state store, so any one
        stores it and the check's owner exports it).  The worker checks the token; nothing here
        reads or logs it."""
        if self.web.tls is not None:
            return web.Response(status=421, text="with TLS, push to a worker's address (listed by /sd)\n")
        alive = [w for w in self.workers if self._alive(w) and w.ready]
        if not alive:
            return web.Response(status=503, text="no worker is running; retry\n", headers={"Retry-After": "1"})
        w = alive[self._next_push % len(alive)]
        self._next_push += 1
        body = await request.content.read(PUSH_BODY_MAX + 1)
        host, _, port = w.address.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        import aiohttp

        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        try:
            async with self._client.post(f"http://{host}:{port}{request.rel_url}", data=body, headers=headers,
                                         allow_redirects=False) as resp:
                data = await resp.content.read(64 * 1024)
                out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "retry-after")}
                return web.Response(status=resp.status, body=data, headers=out)
        except (aiohttp.ClientError, TimeoutError):
            return web.Response(status=503, text="the worker did not answer; retry\n", headers={"Retry-After": "1"})

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
        for name, help_, value in (
                ("stackwatch_http_connections_open", "Connections open to the supervisor.", self.stats.open),
                ("stackwatch_http_connections_refused_total", "Connections closed at accept: the limit was reached.",
                 self.stats.refused),
                ("stackwatch_http_header_timeouts_total", "Connections closed: a request head did not arrive in time.",
                 self.stats.header_timeouts),
                ("stackwatch_http_accept_errors_total", "Connections not accepted for want of file descriptors.",
                 self.stats.accept_errors)):
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return web.Response(body=("\n".join(lines) + "\n").encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def ready(self, request: web.Request) -> web.Response:
        not_ready = [w.index for w in self.workers if not (self._alive(w) and w.ready)]
        if not_ready:
            return web.Response(status=503, text=f"not ready: shard(s) {', '.join(map(str, not_ready))}\n")
        return web.Response(text="Ready\n")

    async def index(self, request: web.Request) -> web.Response:
        rows = "\n".join(f"shard {w.index}: {w.address} ({'running' if self._alive(w) else 'restarting'}, "
                         f"{w.restarts} restarts)" for w in self.workers)
        return web.Response(text=f"stackwatch supervisor: {len(self.workers)} workers\n{rows}\n"
                                 "Prometheus: http_sd_configs with url /sd\n")


async def supervise(sup: Supervisor, limits: Limits | None = None) -> None:
    """Serve /sd, /metrics and readiness through the exporter's own listener (listener.listen:
    connection cap, head and idle timeouts) and keep the workers running."""
    limits = limits or Limits()
    runner = web.AppRunner(sup.build_app(), access_log=None, handle_signals=False,
                           keepalive_timeout=limits.idle_timeout, max_line_size=8190, max_field_size=8190)
    await runner.setup()
    sup._ssl = sup.web.ssl_context()
    assert runner.server is not None
    server = await listen(runner.server, sup.host, sup.port, sup._ssl, limits, sup.stats)
    for w in sup.workers:
        w.task = asyncio.create_task(sup._keep_running(w))
    stop = until_stopped(sup.reload)
    log.info("supervisor listening", extra={"address": f"{sup.host}:{sup.port}", "workers": len(sup.workers)})
    try:
        await stop.wait()
    finally:
        server.close()
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
