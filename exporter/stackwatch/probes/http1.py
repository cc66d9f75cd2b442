"""One HTTP/1.1 request on a fresh connection, its response parsed by httptools (llhttp).

This is the path of every probe that does not ask for keep-alive: one asyncio Protocol per
request, the bytes written once, the response framed and parsed by llhttp (the parser Node.js
and uvicorn use), so chunked encoding, Content-Length rules, interim 1xx answers and malformed
input are handled by a well-kept library.  What stays here is the glue and the limits llhttp
does not have:

* the response head may not exceed :data:`MAX_HEADER_BYTES` (llhttp buffers nothing, but
  httptools collects header lines in memory);
* chunk-size lines, chunk extensions and trailers may not go on for :data:`MAX_FRAMING_BYTES`
  without body data (an endless chunk line or trailer never completes otherwise);
* the body stops at ``body_limit`` bytes, checked against Content-Length before it arrives,
  and decoded (gzip, deflate) with the same bound, so a compressed bomb never inflates.

Timestamps are taken in the protocol callbacks (connection made, first byte, message complete),
so a probe's measured latency is the network's, not the time the exporter's own event loop took
to get back to the waiting coroutine.

Every failure is raised as a :class:`~stackwatch.probes.base.ProbeFailure` with its reason.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import zlib
from time import monotonic

import httptools

from stackwatch.probes.base import ProbeFailure, Reason

MAX_HEADER_BYTES = 64 * 1024
"""Status line plus header lines of one response."""
MAX_FRAMING_BYTES = 64 * 1024
"""Bytes of chunk-size lines, extensions and trailers in a row without body data."""

NO_BODY_STATUS = (204, 304)
TLS_SHUTDOWN_TIMEOUT = 1.0
"""Seconds a finished TLS connection waits for the server's close_notify before it is dropped
(asyncio's default is 30 s, which lets a server that never answers hold a socket that long)."""


class Exchange(asyncio.Protocol):
    """One request and its response; also the result handed back (status, headers, body, times)."""

    __slots__ = ("_parser", "_head_request", "body_limit", "transport", "status", "reason", "headers",
                 "_chunks", "size", "done", "t_start", "t_connected", "t_tls", "t_sent", "t_first", "t_done",
                 "_head_bytes", "_final", "_interim", "_progress", "_idle", "_eof_body", "ssl_object", "_raw")

    def __init__(self, loop: asyncio.AbstractEventLoop, head_request: bool, body_limit: int):
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self.body_limit = body_limit
        self.transport: asyncio.Transport | None = None
        self._raw: asyncio.Transport | None = None
        """The TCP transport under a TLS one."""
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self.size = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.t_start = self.t_connected = self.t_tls = self.t_sent = self.t_first = self.t_done = 0.0
        self._head_bytes = 0
        self._final = False  # the final (non-1xx) response head is complete
        self._interim = False
        self._progress = False
        self._idle = 0
        self._eof_body = False
        self.ssl_object: ssl.SSLObject | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)

    def header(self, name: bytes) -> bytes | None:
        """The last value of a response header (``name`` in lower case)."""
        for n, v in reversed(self.headers):
            if n.lower() == name:
                return v
        return None

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if not self.t_first:
            self.t_first = monotonic()
        self._progress = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Reason.CONNECTION, f"invalid HTTP response: the server switched protocols ({self.status})")
            return
        except httptools.HttpParserError as exc:
            self._fail(Reason.CONNECTION, f"invalid HTTP response: {exc}")
            return
        if self.done.done():
            return
        if not self._final:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self._fail(Reason.CONNECTION, f"invalid HTTP response: header block over {MAX_HEADER_BYTES} bytes")
        elif self._progress:
            self._idle = 0
        else:
            self._idle += len(data)
            if self._idle > MAX_FRAMING_BYTES:
                self._fail(Reason.CONNECTION, f"invalid HTTP response: over {MAX_FRAMING_BYTES} bytes of chunk "
                                              "framing or trailers without body data")

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        for t in (self.transport, self._raw):
            if t is not None and hasattr(t, "_read_ready_cb"):
                # asyncio's selector transport keeps a bound method of itself (a cycle CPython's
                # asyncio never breaks; uvloop's has none); nothing reads it once the connection
                # is lost.  Left in place, the transport and its socket wait for the cyclic GC.
                t._read_ready_cb = None
        self._raw = None
        if self.done.done():
            return
        if self._final and self._eof_body:
            self._complete()  # a body delimited by the connection's close
        elif exc is not None:
            self._fail(Reason.CONNECTION, f"connection lost: {exc}")
        elif self._final:
            self._fail(Reason.CONNECTION, "peer closed connection without sending complete message body")
        else:
            self._fail(Reason.CONNECTION, "server closed the connection without a response")

    # ------------------------------------------------------------ parser callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._final:  # a trailer: counted by the framing bound, not kept
            self._progress = True
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEADER_BYTES:
            self._fail(Reason.CONNECTION, f"invalid HTTP response: header block over {MAX_HEADER_BYTES} bytes")
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self.status = status
        if 100 <= status < 200 and status != 101:  # 100 Continue and friends: the real answer follows
            self._interim = True
            self.headers = []
            self._head_bytes = 0
            return
        if status == 101:
            self._fail(Reason.CONNECTION, "invalid HTTP response: the server switched protocols (101)")
            return
        self._final = self._progress = True
        length = self.header(b"content-length")
        chunked = (self.header(b"transfer-encoding") or b"").lower().endswith(b"chunked")
        if length is not None and length.isdigit() and int(length) > self.body_limit and not self._head_request:
            self._fail(Reason.BODY_TOO_LARGE,
                       f"Content-Length {int(length)} is over the body_size_limit of {self.body_limit} bytes")
            return
        if self._head_request:
            self._complete()  # llhttp would wait for the Content-Length it announces
            return
        self._eof_body = length is None and not chunked and status not in NO_BODY_STATUS

    def on_body(self, data: bytes) -> None:
        if self.done.done():
            return
        self._progress = True
        self.size += len(data)
        if self.size > self.body_limit:
            self._fail(Reason.BODY_TOO_LARGE, f"body is over the body_size_limit of {self.body_limit} bytes")
            return
        self._chunks.append(data)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.done.done():
            self._complete()

    # ------------------------------------------------------------ outcome

    def _complete(self) -> None:
        self.t_done = monotonic()
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def release(self) -> None:
        """Break the exchange's reference cycles (parser <-> callbacks, future <-> raised failure),
        so that reference counting frees it the moment the caller drops it.  Left to the cyclic
        GC, a probe's objects would wait for a collection, and any that were in flight when the
        exporter froze the GC's generations (app.py) would be kept until its next full sweep."""
        self._parser = None
        if self.done.done() and not self.done.cancelled() and self.done.exception() is not None:
            done = self.done.get_loop().create_future()
            done.set_result(None)
            self.done = done  # the failure object (and its traceback) is the caller's alone

    def abort(self) -> None:
        """Drop the connection now, whatever state it is in (idempotent)."""
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, reason: Reason, message: str) -> None:
        if self.done.done():
            return
        self.t_done = monotonic()
        self.done.set_exception(ProbeFailure(reason, message))
        self.done.exception()  # retrieved: the caller re-raises it, or has gone at its deadline
        self.abort()


def _connect_failure(exc: OSError, host: str) -> ProbeFailure:
    if isinstance(exc, socket.gaierror):
        return ProbeFailure(Reason.DNS, f"cannot resolve host {host}: {exc.strerror or exc}")
    if isinstance(exc, ConnectionRefusedError) or "Connection refused" in str(exc):
        # asyncio folds several refused addresses into one OSError("Multiple exceptions: ...")
        return ProbeFailure(Reason.CONNECTION_REFUSED, "connection refused")
    return ProbeFailure(Reason.CONNECTION, f"{type(exc).__name__}: {exc or 'connection failed'}")


async def request(host: str, port: int, payload: bytes, *, deadline: float, body_limit: int,
                  head_request: bool = False, ssl_context: ssl.SSLContext | None = None,
                  server_hostname: str | None = None) -> Exchange:
    """Connect, (TLS,) send ``payload``, read the response until ``deadline`` (loop time)."""
    loop = asyncio.get_running_loop()
    ex = Exchange(loop, head_request, body_limit)
    stage = "connecting"
    ex.t_start = monotonic()
    transport: asyncio.Transport | None = None
    raw: asyncio.Transport | None = None  # the TCP transport under a TLS one
    try:
        async with asyncio.timeout_at(deadline):
            try:
                transport, _ = await loop.create_connection(lambda: ex, host, port)
            except OSError as exc:
                raise _connect_failure(exc, host) from None
            ex.t_connected = ex.t_tls = monotonic()
            if ssl_context is not None:
                stage = "in the TLS handshake"
                try:
                    new = await loop.start_tls(transport, ex, ssl_context, server_hostname=server_hostname or host,
                                               ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT)
                except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
                    raise ProbeFailure(Reason.TLS, f"TLS handshake failed: {exc}") from None
                assert new is not None
                raw, transport = transport, new
                ex.transport, ex._raw = new, raw
                ex.ssl_object = new.get_extra_info("ssl_object")
                ex.t_tls = monotonic()
            stage = "waiting for the response"
            transport.write(payload)
            ex.t_sent = monotonic()
            await ex.done
    except TimeoutError:
        if ex._final:
            stage = "reading the body"
        raise ProbeFailure(Reason.TIMEOUT, f"no complete answer within the timeout ({stage})") from None
    finally:
        # Every way out but a complete answer (timeout, cancellation, a failure raised here or by
        # the protocol) drops the connection at once: abort() releases the socket now, where a
        # TLS close() would wait for the peer's close_notify.  ``ex.done`` says nothing here: a
        # timeout cancels it, so it is "done" without the exchange having finished.
        if not (ex.done.done() and not ex.done.cancelled() and ex.done.exception() is None):
            ex.abort()
            if transport is not None and transport is not ex.transport:
                transport.abort()
            if raw is not None:
                raw.abort()
        ex.release()
    return ex


def decode(body: bytes, encoding: bytes | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone (gzip, deflate; others as received), at most
    ``limit`` bytes decoded: past it, ProbeFailure(body_too_large)."""
    if not encoding or not body:
        return body
    try:
        return _decode(body, encoding, limit)
    except zlib.error as exc:
        raise ProbeFailure(Reason.CONNECTION, f"invalid HTTP response: cannot decode the body ({exc})") from None


def _decode(body: bytes, encoding: bytes, limit: int) -> bytes:
    for coding in reversed([c.strip().lower() for c in encoding.split(b",")]):
        if coding in (b"gzip", b"x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit)
        elif coding == b"deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit)
            except zlib.error:  # "deflate" sent without its zlib wrapper, as some servers do
                body = _inflate(body, -zlib.MAX_WBITS, limit)
        elif coding not in (b"identity", b""):
            return body  # an encoding we did not ask for: left as it came
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    while data:
        d = zlib.decompressobj(wbits)
        part = d.decompress(data, limit + 1 - size)
        size += len(part)
        out.append(part)
        if size > limit or d.unconsumed_tail:
            raise ProbeFailure(Reason.BODY_TOO_LARGE, f"decoded body is over the body_size_limit of {limit} bytes")
        if not d.eof:
            raise ProbeFailure(Reason.CONNECTION, "invalid HTTP response: truncated compressed body")
        data = d.unused_data  # concatenated gzip members
        if wbits < 16:
            break
    return b"".join(out)
