"""HTTP endpoints: /metrics, /probe, /-/healthy, /-/ready, /-/reload and a status page at /."""

from __future__ import annotations

import asyncio
import html
import logging
import signal
import time

from aiohttp import web

from stackwatch import __version__
from stackwatch.app import Exporter
from stackwatch.collector import negotiate, probe_body
from stackwatch.config import masked_dump

log = logging.getLogger("stackwatch.server")
EXPORTER: web.AppKey[Exporter] = web.AppKey("exporter", Exporter)


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
    for part in parts:
        await resp.write(part)
    await resp.write_eof()
    return resp


async def probe(request: web.Request) -> web.Response:
    """Run one configured target now, into a fresh registry (blackbox's /probe, by target name)."""
    ex = request.app[EXPORTER]
    name = request.query.get("target", "")
    if not name:
        return web.Response(status=400, text="missing the target parameter: /probe?target=NAME\n")
    target = ex.config.target(name)
    if target is None:
        known = ", ".join(t.name for t in ex.config.targets[:20])
        return web.Response(status=404, text=f'unknown target "{html.escape(name)}"; configured: {known}\n')
    result = await ex.probers.run(target)
    fmt = negotiate(request.headers.get("Accept", ""))
    if request.query.get("debug", "").lower() in ("1", "true", "yes"):
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
    ok, message = request.app[EXPORTER].reload()
    return web.Response(status=200 if ok else 400, text=message + "\n")


async def reload_wrong_method(request: web.Request) -> web.Response:
    return web.Response(status=405, text="use POST /-/reload\n", headers={"Allow": "POST"})


async def status_page(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    now = time.time()
    rows = []
    for state in ex.store.states.values():
        t, r = state.target, state.result
        if r is None:
            status, reason, when, took = "pending", "", "never", ""
        else:
            status = "up" if r.success else "DOWN"
            reason = f"{r.reason.value}: {r.message}" if r.reason else ""
            when = f"{now - r.finished_at:.0f}s ago"
            took = f"{r.duration * 1000:.1f} ms"
        rows.append(
            f"<tr class='{status.lower()}'><td>{html.escape(t.name)}</td><td>{t.kind}</td><td>{status}</td>"
            f"<td>{html.escape(reason)}</td><td>{when}</td><td>{took}</td>"
            f"<td><a href='probe?target={html.escape(t.name)}&amp;debug=true'>debug</a></td></tr>"
        )
    reload_note = "" if ex.reload_ok else f"<p class='down'>Last reload failed:<pre>{html.escape(ex.last_reload_error)}</pre></p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>stackwatch</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.down td,.down{{color:#b00}}.up td:nth-child(3){{color:#070}}</style></head><body>
<h1>stackwatch {__version__}</h1><p>Config: {html.escape(ex.config_path)} ({len(ex.config.targets)} targets).
<a href="metrics">Metrics</a></p>{reload_note}
<table><tr><th>Target</th><th>Kind</th><th>Status</th><th>Reason</th><th>Last probe</th><th>Duration</th><th></th></tr>
{''.join(rows)}</table></body></html>"""
    return web.Response(text=page, content_type="text/html")


def build_app(ex: Exporter) -> web.Application:
    app = web.Application()
    app[EXPORTER] = ex
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/-/reload", reload_wrong_method)
    app.router.add_get("/", status_page)
    return app


def parse_listen(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


async def serve(ex: Exporter, listen: str) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the config."""
    await ex.start()
    app = build_app(ex)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_listen(listen)
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("listening", extra={"address": f"{host}:{port}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, ex.reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
        await ex.stop()
