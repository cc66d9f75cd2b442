"""The listening socket's limits: what a caller may cost the exporter.

aiohttp alone keeps a connection as long as the peer likes: a client that connects and sends
nothing, or half a request head, holds a file descriptor indefinitely, and enough of them take
the descriptors the probes need.  :class:`Guard` wraps aiohttp's per-connection protocol:

* at most ``max_connections`` at once (the rest are closed at accept);
* a request head (request line and headers) must arrive within ``header_timeout`` of its first
  byte, or of the connection's opening for the first request (slowloris);
* an idle keep-alive connection is closed by aiohttp after ``idle_timeout``;
* the TLS handshake has ``header_timeout`` too.

Counts of refused connections and timeouts are exported (``stackwatch_http_*``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("stackwatch.http")

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
MAX_HEAD = 64 * 1024


@dataclass
class Limits:
    max_connections: int = 512
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_body: int = 64 * 1024

    def effective_max_connections(self) -> int:
        """The configured cap, but never more than a quarter of the open-file limit: the rest
        is for the probes' own connections."""
        try:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (OSError, ValueError):
            soft = resource.RLIM_INFINITY
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return self.max_connections
        return max(8, min(self.max_connections, soft // 4))


@dataclass
class Stats:
    open: int = 0
    accepted: int = 0
    refused: int = 0
    header_timeouts: int = 0
    accept_errors: int = 0
    """accept() failures for want of file descriptors or memory (asyncio retries a second later)."""


class Guard(asyncio.Protocol):
    """Wraps one aiohttp RequestHandler; see the module docstring."""

    __slots__ = ("inner", "limits", "stats", "cap", "transport", "timer", "in_head", "head", "body_left",
                 "tracking", "counted")

    def __init__(self, inner: Any, limits: Limits, stats: Stats, cap: int):
        self.inner = inner
        self.limits = limits
        self.stats = stats
        self.cap = cap
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.in_head = True
        self.head = b""
        self.body_left = 0
        self.tracking = True
        self.counted = False

    # ----------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.stats.open >= self.cap:
            self.stats.refused += 1
            transport.abort()
            return
        self.stats.open += 1
        self.stats.accepted += 1
        self.counted = True
        self._arm()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.stats.open -= 1
            self.counted = False
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.counted:
            return
        if self.tracking:
            self._track(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.counted else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # ----------------------------------------------------------------- head tracking

    def _arm(self) -> None:
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.limits.header_timeout, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.in_head and self.transport is not None:
            self.stats.header_timeouts += 1
            self.transport.abort()

    def _track(self, data: bytes) -> None:
        view = data
        while view and self.tracking:
            if not self.in_head:
                used = min(self.body_left, len(view))
                self.body_left -= used
                view = view[used:]
                if self.body_left == 0 and view:
                    self.in_head = True  # the next request's head starts here
                    self._arm()
                continue
            if not self.head:
                self._arm()  # a keep-alive connection's next request: its head has a deadline too
            joined = self.head + view
            end = joined.find(b"\r\n\r\n")
            if end < 0:
                self.head = joined[-MAX_HEAD:]
                return
            head, view = joined[: end + 4], joined[end + 4:]
            self.head = b""
            self.in_head = False
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if _CHUNKED.search(head):
                self.tracking = False  # chunked request bodies are rare here; aiohttp bounds them
                return
            m = _CONTENT_LENGTH.search(head)
            self.body_left = int(m.group(1)) if m else 0
            if self.body_left == 0:
                self.in_head = True
                if view:
                    self._arm()


async def listen(handler_factory: Callable[[], Any], host: str, port: int, ssl_context: ssl.SSLContext | None,
                 limits: Limits, stats: Stats) -> asyncio.Server:
    """The listening socket, every connection behind a :class:`Guard`: the one way both the
    exporter and the ``--workers`` supervisor serve HTTP."""
    loop = asyncio.get_running_loop()
    quiet_accept_errors(loop, stats)
    cap = limits.effective_max_connections()
    return await loop.create_server(
        lambda: Guard(handler_factory(), limits, stats, cap), host, port, ssl=ssl_context,
        ssl_handshake_timeout=limits.header_timeout if ssl_context else None, backlog=128, reuse_address=True)


ACCEPT_LOG_EVERY = 10.0


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, stats: Stats) -> None:
    """When the process runs out of file descriptors, asyncio's accept loop reports every failed
    accept() with a traceback (tens of thousands a minute under a connection flood).  They are
    counted instead (stackwatch_http_accept_errors_total) and logged as one line at most every
    ACCEPT_LOG_EVERY seconds; other loop errors keep the default handling."""
    previous = loop.get_exception_handler()
    last = [0.0]

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" in str(context.get("message", "")):
            stats.accept_errors += 1
            now = time.monotonic()
            if now - last[0] >= ACCEPT_LOG_EVERY:
                last[0] = now
                exc = context.get("exception")
                log.warning("cannot accept connections: out of file descriptors or memory; retrying each second",
                            extra={"error": f"{type(exc).__name__}: {exc}" if exc else "",
                                   "failed_accepts": stats.accept_errors})
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)


def until_stopped(reload: Callable[[], Awaitable[Any]]) -> asyncio.Event:
    """The serving process's signals, as Prometheus' own daemons have them: SIGHUP runs
    ``reload()`` (each in a task kept until it ends), SIGTERM and SIGINT set the returned event,
    which the caller waits on before shutting down."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running: set[asyncio.Task[Any]] = set()

    def sighup() -> None:
        task = loop.create_task(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, sighup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    return stop

