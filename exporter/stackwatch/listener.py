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
import re
import resource
from dataclasses import dataclass
from typing import Any

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
