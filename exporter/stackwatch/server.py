"""HTTP endpoints: /metrics, /probe, /-/healthy, /-/ready, /-/reload and a status page at /.

Safe to expose: with ``--web.config.file`` every endpoint but /-/healthy needs basic auth
and/or a client certificate (TLS); ``POST /-/reload`` needs ``--web.enable-lifecycle`` and
refuses cross-site requests; the listener bounds connections, head read time, idle time and
request sizes (:mod:`stackwatch.listener`); a malformed request gets a 400 and one debug line.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from stackwatch import pages, statuspage as sp
from stackwatch.app import Exporter
from stackwatch.config import masked_dump
from stackwatch.cooperative import Slicer
from stackwatch.durations import human_duration
from stackwatch.exposition import negotiate
from stackwatch.listener import Limits, listen as open_listener, until_stopped
from stackwatch.probes import heartbeat
from stackwatch.probes.base import check_words
from stackwatch.push import routes as push_routes
from stackwatch.scheduler import Busy
from stackwatch.series import probe_body
from stackwatch.store import TargetState
from stackwatch.webconfig import authorize

log = logging.getLogger("stackwatch.server")
EXPORTER: web.AppKey[Exporter] = web.AppKey("exporter", Exporter)
LIFECYCLE: web.AppKey[bool] = web.AppKey("lifecycle", bool)


def _wants_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "")


async def metrics(request: web.Request) -> web.StreamResponse:
    ex = request.app[EXPORTER]
    fmt = negotiate(request.headers.get("Accept", ""))
    gz = _wants_gzip(request)
    parts = await ex.collector.render(fmt, ex.self_metrics, gz)
    resp = web.StreamResponse(headers={"Content-Type": fmt.content_type, "Vary": "Accept-Encoding, Accept"})
    if gz:
        resp.headers["Content-Encoding"] = "gzip"
    resp.content_length = sum(len(p) for p in parts)
    await resp.prepare(request)
    # The body is many kept gzip members (one per family and phase group): written in chunks of
    # about WRITE_CHUNK, not one send per member, and never joined whole.
    chunk: list[bytes] = []
    size = 0
    for part in parts:
        chunk.append(part)
        size += len(part)
        if size >= WRITE_CHUNK:
            await resp.write(b"".join(chunk) if len(chunk) > 1 else chunk[0])
            chunk, size = [], 0
    if chunk:
        await resp.write(b"".join(chunk))
    await resp.write_eof()
    return resp


WRITE_CHUNK = 64 * 1024


async def probe(request: web.Request) -> web.Response:
    """Run one configured target now, into a fresh registry (blackbox's /probe, by target name)."""
    ex = request.app[EXPORTER]
    name = request.query.get("target", "")
    if not name:
        return web.Response(status=400, text="missing the target parameter: /probe?target=NAME\n")
    target = ex.config.target(name)
    if target is None:
        # The configured names are not listed: they are not every caller's business.
        return web.Response(status=404, text=f'unknown target "{html.escape(name[:200])}"; see the status page\n')
    debug = request.query.get("debug", "").lower() in ("1", "true", "yes")
    assert ex.scheduler is not None
    try:
        result = await ex.scheduler.probe(target, verbose=debug)
    except Busy as exc:
        return web.Response(status=503, text=f"busy: {exc}; retry later\n", headers={"Retry-After": "1"})
    fmt = negotiate(request.headers.get("Accept", ""))
    if debug:
        body = probe_body(target, result, False)
        outcome = "succeeded" if result.success else f"failed: {result.reason.value if result.reason else ''}: {result.message}"
        text = (f"Logs for the probe (target {name}):\n" + "\n".join(result.log)
                + f"\nProbe {outcome} in {result.duration:.4f}s\n\n"
                + "Metrics that would have been returned:\n" + body
                + "\nTarget configuration (secrets masked):\n" + masked_dump(target))
        return web.Response(text=text, content_type="text/plain")
    return web.Response(body=probe_body(target, result, fmt.openmetrics).encode(),
                        headers={"Content-Type": fmt.content_type})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[EXPORTER].ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready\n")


async def reload(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    if not request.app[LIFECYCLE]:
        return web.Response(status=403, text="Lifecycle API is not enabled (start with --web.enable-lifecycle; "
                                             "SIGHUP always reloads).\n")
    if _cross_site(request):
        return web.Response(status=403, text="cross-site reload requests are refused\n")
    ok, message = await ex.reload()
    return web.Response(status=200 if ok else 400, text=message + "\n")


def _cross_site(request: web.Request) -> bool:
    """A browser's request from another site (a form post from a web page, say)."""
    if request.headers.get("Sec-Fetch-Site", "") in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    host = request.headers.get("Host", "")
    return origin == "null" or origin.split("://", 1)[-1].rstrip("/") != host


async def reload_wrong_method(request: web.Request) -> web.Response:
    return web.Response(status=405, text="use POST /-/reload\n", headers={"Allow": "POST"})


async def _alerts(ex: Exporter) -> list[sp.Alert] | str | None:
    """Current alerts, None without an Alertmanager, or why they could not be read."""
    if not ex.remotes.alertmanager:
        return None
    try:
        return await ex.remotes.alerts()
    except sp.RemoteError as exc:
        return exc.message


class Renders:
    """The views that walk many targets (status page, target pages, JSON API), rendered at most
    CONCURRENT at a time, shared by callers asking the same thing within TTL seconds (one render
    for ten viewers), and turned away with 503 once CONCURRENT + QUEUE are waiting.  So however
    many callers there are, at most two renders compete with probing, scrapes and /-/healthy for
    the event loop, in 2 ms slices."""

    TTL = 2.0
    CONCURRENT = 2
    QUEUE = 32
    MAX_KEYS = 256

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, tuple[int, bytes, str, str | None]]] = {}
        self._inflight: dict[str, asyncio.Task[tuple[int, bytes, str, str | None]]] = {}
        self._gate = asyncio.Semaphore(self.CONCURRENT)
        self._pending = 0
        self.refused = 0

    async def serve(self, request: web.Request, make: Callable[[], Awaitable[web.Response]]) -> web.Response:
        key = request.path_qs[:2048]
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.TTL:
            return self._response(hit[1])
        task = self._inflight.get(key)
        if task is None:
            if self._pending >= self.CONCURRENT + self.QUEUE:
                self.refused += 1
                return web.Response(status=503, text="busy: too many pages being rendered; retry in a second\n",
                                    headers={"Retry-After": "1"})
            task = self._inflight[key] = asyncio.get_running_loop().create_task(self._build(key, make))
        return self._response(await asyncio.shield(task))

    async def _build(self, key: str, make: Callable[[], Awaitable[web.Response]]) -> tuple[int, bytes, str, str | None]:
        self._pending += 1
        try:
            async with self._gate:
                resp = await make()
            body = resp.body if isinstance(resp.body, bytes) else b""
            value = (resp.status, body, resp.content_type, resp.charset)
        finally:
            self._pending -= 1
            self._inflight.pop(key, None)
        if len(self._cache) >= self.MAX_KEYS:
            now = time.monotonic()
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.TTL}
            if len(self._cache) >= self.MAX_KEYS:
                self._cache.clear()
        self._cache[key] = (time.monotonic(), value)
        return value

    @staticmethod
    def _response(value: tuple[int, bytes, str, str | None]) -> web.Response:
        status, body, ctype, charset = value
        return web.Response(status=status, body=body, content_type=ctype, charset=charset)


RENDERS: web.AppKey[Renders] = web.AppKey("renders", Renders)


def rendered(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Serve ``handler`` through the app's Renders (bounded, shared, briefly cached)."""
    async def wrapper(request: web.Request) -> web.Response:
        return await request.app[RENDERS].serve(request, lambda: handler(request))

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


@rendered
async def status_page(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    now = time.time()
    # Worst first, then by name: a pass over the name-sorted list into one list per state.
    buckets: dict[str, list[TargetState]] = {k: [] for k in pages.STATES}
    slicer = Slicer()
    for st in ex.store.by_name():
        buckets[sp.target_state(st, now)[0]].append(st)
        await slicer.pause()
    counts = {k: len(v) for k, v in buckets.items()}
    states = [st for k in buckets for st in buckets[k]]
    try:
        page_no = max(0, int(request.query.get("page", "0")))
    except ValueError:
        page_no = 0
    shown = states[page_no * sp.PAGE_SIZE:(page_no + 1) * sp.PAGE_SIZE]
    hist, alerts, (found, found_from) = await asyncio.gather(
        sp.histories(ex.store, ex.remotes, [st.target.name for st in shown]), _alerts(ex),
        sp.incidents(ex.store, ex.remotes))
    rows = []
    for st in shown:
        t = st.target
        status, reason, _ = sp.target_state(st, now)
        if st.result is not None and status in ("down", "up", "degraded"):
            reason = (f"{'down' if status == 'down' else 'up'} since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(st.since))} "
                      f"UTC ({human_duration(now - st.since)}). {reason}").strip()
        if t.kind == "heartbeat" and status in ("up", "degraded"):  # a failure's reason says it already
            reason = f"{reason} {_heartbeat_due(ex, t, now)}".strip()
        window = ex.config.in_maintenance(t.name, now)
        if window is not None:
            until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(window.end))
            reason = f"[maintenance {window.name} until {until}] {reason}".strip()
        last = f"{now - st.result.finished_at:.0f}s ago" if st.result else "never"
        rows.append(pages.Row(t.name, t.kind, status, reason, hist[t.name], last))
        await slicer.pause()
    source = next(iter(hist.values())).source if hist else "memory"
    fetched = (f" Fetched {time.time() - ex.remotes.last_answer_at:.0f} s ago." if ex.remotes.last_answer_at else "")
    note = ("History from Prometheus." + fetched if source == "prometheus" else
            "History since stackwatch started (in memory): set --prometheus.url for history that survives restarts"
            + (f" (Prometheus unavailable: {ex.remotes.last_error})" if ex.remotes.last_error else "") + ".")
    text = pages.status_page(rows, counts, len(states), ex.config_path, note,
                             None if ex.reload_ok else ex.last_reload_error, page_no, alerts, found, found_from, now)
    return web.Response(text=text, content_type="text/html")


@rendered
async def target_page(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    name = request.match_info["name"]
    st = ex.store.states.get(name)
    if st is None:
        return web.Response(status=404, text=f'unknown target "{html.escape(name[:200])}"\n')
    now = time.time()
    status, reason, checks = sp.target_state(st, now)
    hist, alerts, (found, found_from) = await asyncio.gather(
        sp.histories(ex.store, ex.remotes, [name]), _alerts(ex), sp.incidents(ex.store, ex.remotes, name))
    t = st.target
    row = _heartbeat_row(ex, name) if t.kind == "heartbeat" else None
    job = heartbeat.details(t, row, now) if row is not None else None
    # a heartbeat's "probe" only reads the store: no latency to draw
    latency = None if t.kind == "heartbeat" else await _latency(ex, st, request.query.get("latency", "probes"))
    text = pages.target_page(name, t.kind, t.every, status, reason, [(check_words(c), c) for c in checks], job,
                             hist[name], latency, alerts, found, found_from, now)
    return web.Response(text=text, content_type="text/html")


async def _latency(ex: Exporter, st: TargetState, range_: str) -> str:
    """The latency section: the last probes from memory, or the p95 over 1h/24h/7d from Prometheus."""
    if range_ not in sp.LATENCY_RANGES:
        range_ = "probes"
    error = None
    if range_ != "probes":
        try:
            return pages.latency_section(range_, await sp.latency_history(ex.remotes, st.target.name, range_))
        except sp.RemoteError as exc:
            error = exc.message
    return pages.latency_section(range_, st.history.latency() if st.history is not None else [], error)


def _heartbeat_row(ex: Exporter, name: str) -> Any:
    state = ex.probers.states.get("heartbeat")
    return getattr(state, "rows", {}).get(name)


def _heartbeat_due(ex: Exporter, t: Any, now: float) -> str:
    row = _heartbeat_row(ex, t.name)
    return heartbeat.due_words(t, row, now) + "." if row is not None else ""


API_PAGE = 500
API_PAGE_MAX = 5000


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f'{name} must be a whole number from {low} to {high}, got "{raw[:20]}"')
    return int(raw)


@rendered
async def api_targets(request: web.Request) -> web.Response:
    """Targets in config order, ``limit`` (default API_PAGE, at most API_PAGE_MAX) from ``offset``."""
    ex = request.app[EXPORTER]
    try:
        limit = _int_param(request, "limit", API_PAGE, 1, API_PAGE_MAX)
        offset = _int_param(request, "offset", 0, 0, 10**9)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    now = time.time()
    every = list(ex.store.states.values())
    states = every[offset:offset + limit]
    # Prometheus history for up to 1000 targets (one query); beyond that, memory, which is free.
    remotes = ex.remotes if len(states) <= 1000 else sp.Remotes()
    hist = await sp.uptimes(ex.store, remotes, [st.target.name for st in states])
    # Built and encoded a slice at a time, giving the event loop back in between: at thousands
    # of targets the whole list takes long enough to delay probes (scheduler lag).
    slicer = Slicer()
    parts: list[bytes] = []
    batch: list[str] = []
    for st in states:
        window = ex.config.in_maintenance(st.target.name, now)
        batch.append(json.dumps(sp.target_json(st, hist[st.target.name], now, window.name if window else None)))
        if len(batch) >= 100:
            parts.append(",".join(batch).encode())
            batch = []
        await slicer.pause()
    if batch:
        parts.append(",".join(batch).encode())
    following = offset + limit if offset + limit < len(every) else None
    error = remotes.last_error if remotes.prometheus and any(h.source == "memory" for h in hist.values()) else ""
    tail = {"generated_at": now, "total": len(every), "offset": offset, "limit": limit, "next_offset": following,
            "history_error": error or None}
    body = b'{"targets":[' + b",".join(parts) + b"]," + json.dumps(tail).encode()[1:]
    return web.Response(body=body, content_type="application/json")


@rendered
async def api_history(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    name = request.match_info["name"]
    range_ = request.query.get("range", "24h")
    if range_ not in ("24h", "90d"):
        return web.json_response({"error": f'range must be 24h or 90d, got "{range_[:20]}"'}, status=400)
    if name not in ex.store.states:
        return web.json_response({"error": f'unknown target "{name[:200]}"'}, status=404)
    hist = await sp.histories(ex.store, ex.remotes, [name])
    doc = sp.history_json(name, hist[name], range_)
    if ex.remotes.prometheus and hist[name].source == "memory" and ex.remotes.last_error:
        doc["error"] = f"history from Prometheus unavailable: {ex.remotes.last_error}"
    return web.json_response(doc)


async def api_probes(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    name = request.match_info["name"]
    state = ex.store.states.get(name)
    if state is None:
        return web.json_response({"error": f'unknown target "{name[:200]}"'}, status=404)
    return web.json_response(sp.probes_json(state))


OPEN_PATHS = frozenset({"/-/healthy"})
"""Reachable without credentials, as in Prometheus: a liveness check needs none."""


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    ex = request.app[EXPORTER]
    webcfg = ex.web
    if webcfg.auth_required and request.path not in OPEN_PATHS and not request.path.startswith("/push/"):
        # /push/ has its own credentials (each heartbeat's token, stackwatch.push): a scrape
        # password does not allow pushing, and a push token allows nothing else.
        refused = await authorize(ex.auth, webcfg, request.headers.get("Authorization"))
        if refused is not None:
            status, headers, text = refused
            return web.Response(status=status, text=text, headers=headers)
    return await handler(request)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The web config's response headers, on every response (streamed ones included)."""
    for name, value in request.app[EXPORTER].web.headers.items():
        response.headers[name] = value


def build_app(ex: Exporter, enable_lifecycle: bool = False) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[EXPORTER] = ex
    app[RENDERS] = Renders()
    app[LIFECYCLE] = enable_lifecycle
    app.on_response_prepare.append(_add_headers)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/-/reload", reload_wrong_method)
    app.router.add_get("/", status_page)
    app.router.add_get("/targets/{name}", target_page)
    app.router.add_get("/api/v1/targets", api_targets)
    app.router.add_get("/api/v1/targets/{name}/history", api_history)
    app.router.add_get("/api/v1/targets/{name}/probes", api_probes)
    push_routes(app, ex.pusher.handle)
    return app


def parse_listen(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _QuietLog:
    """aiohttp's per-connection logger: a malformed request (bad request line, headers too
    long, non-HTTP bytes) is one debug line, no traceback; errors in stackwatch's own handlers
    keep theirs."""

    def __init__(self, logger: logging.Logger):
        self._log = logger

    def _short(self, msg: str, args: tuple[Any, ...], exc_info: Any) -> str:
        text = msg % args if args else msg
        exc = exc_info if isinstance(exc_info, BaseException) else None
        return f"{text}: {type(exc).__name__}: {str(exc)[:200]}" if exc is not None else text

    def debug(self, msg: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(self._short(msg, args, exc_info))

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **_: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if isinstance(exc, HttpProcessingError | ConnectionError) or "Error handling request" in msg:
            self.debug(msg, *args, exc_info=exc)
        else:
            self._log.error(msg, *args, exc_info=exc_info)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log.error(msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log.warning(msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log.info(msg, *args, **kw)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 -- logging's name
        return self._log.isEnabledFor(level)


async def serve(ex: Exporter, listen: str, enable_lifecycle: bool = False, limits: Limits | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config (and the web config)."""
    limits = limits or Limits()
    await ex.start()
    app = build_app(ex, enable_lifecycle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout,
                           logger=_QuietLog(logging.getLogger("stackwatch.http")), max_line_size=8190,
                           max_field_size=8190)
    await runner.setup()
    host, port = parse_listen(listen)
    ex.web_ssl = ex.web.ssl_context()
    server_factory = runner.server
    assert server_factory is not None
    server = await open_listener(server_factory, host, port, ex.web_ssl, limits, ex.listener_stats)
    log.info("listening", extra={"address": f"{host}:{port}", "tls": ex.web_ssl is not None,
                                 "basic_auth": ex.web.auth_required,
                                 "max_connections": limits.effective_max_connections()})
    ready_fd = os.environ.pop("STACKWATCH_READY_FD", "")
    if ready_fd.isdigit():  # a --workers supervisor waits for this byte (its readiness needs no HTTP)
        with contextlib.suppress(OSError):
            os.write(int(ready_fd), b"1")
            os.close(int(ready_fd))
    stop = until_stopped(ex.reload)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        server.close()
        await runner.cleanup()
        await ex.stop()
