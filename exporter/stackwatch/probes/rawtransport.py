"""A lean HTTP/1.1 transport for httpx: one fresh asyncio connection per request, no pool.

httpx stays the client API (auth, redirects, content decoding, URL handling); this replaces
only what sits under it.  httpcore + h11 + anyio cost ~1 CPU-ms per fresh-connection probe on
the project machine, mostly in anyio cancel scopes, lock setup and h11's state machine
(bench/RESULTS.md).  A Protocol that writes one request and parses one response costs a
fraction of that.

Scope, on purpose: HTTP/1.1 only, ``Connection: close`` on every request, responses framed by
Content-Length, chunked encoding or connection close.  Targets that want keep-alive or HTTP/2
use httpx's own transport (``keep_alive: true``).

Trace events use httpcore's names (``connection.connect_tcp``, ``connection.start_tls``,
``http11.send_request_headers``, ``http11.receive_response_headers``,
``http11.receive_response_body``), so the same trace callback times both transports.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

MAX_HEADER_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096
"""A chunk-size line (hex size plus extensions) longer than this is a protocol error."""
_READ_HIGH_WATER = 256 * 1024


class _TLSInfo:
    """What the trace callback reads from a network stream (httpcore's get_extra_info)."""

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport

    def get_extra_info(self, name: str) -> Any:
        return self._transport.get_extra_info(name)


class _ResponseProtocol(asyncio.Protocol):
    """Collects one HTTP/1.1 response: header block first, then body chunks as they arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop, head_request: bool):
        self._loop = loop
        self._head_request = head_request
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done: asyncio.Future[None] = loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: Exception | None = None
        self._paused = False
        # body framing
        self._mode = "close"  # length | chunked | close | none
        self._remaining = 0
        self._chunk_state = "size"
        self._trailer_bytes = 0
        self.body_complete = False

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.headers_done.done():
            self._buf += data
            self._parse_head()
        else:
            self._feed_body(data)

    def eof_received(self) -> bool | None:
        self._finish_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None and not self.body_complete:
            self._error = exc
        self._finish_eof()

    # -- parsing
    def _parse_head(self) -> None:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    self._fail(httpx.RemoteProtocolError("response header block over 64 KiB"))
                return
            head = bytes(self._buf[:end])
            rest = bytes(self._buf[end + 4:])
            self._buf.clear()
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                self._fail(httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}"))
                return
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:  # 100 Continue and friends: the real answer follows
                self._buf += rest
                continue
            self.status = status
            self.reason = parts[2] if len(parts) > 2 else b""
            headers = []
            for raw in lines[1:]:
                name, sep, value = raw.partition(b":")
                if not sep:
                    self._fail(httpx.RemoteProtocolError(f"malformed header line {raw[:80]!r}"))
                    return
                headers.append((name.strip(), value.strip()))
            self.headers = headers
            self._choose_framing()
            self.headers_done.set_result(None)
            self._feed_body(rest)  # also completes empty bodies (HEAD, 204, Content-Length: 0)
            return

    def _choose_framing(self) -> None:
        te = cl = None
        for name, value in self.headers:
            low = name.lower()
            if low == b"transfer-encoding":
                te = value.lower()
            elif low == b"content-length":
                cl = value
        if self._head_request or self.status in (204, 304):
            self._mode = "none"
        elif te is not None and te.endswith(b"chunked"):
            self._mode = "chunked"
        elif cl is not None:
            if not cl.isdigit():
                self._fail(httpx.RemoteProtocolError(f"invalid Content-Length {cl[:40]!r}"))
                return
            self._mode, self._remaining = "length", int(cl)
        else:
            self._mode = "close"

    def _feed_body(self, data: bytes) -> None:
        if self._mode == "none":
            self._complete()
        elif self._mode == "length":
            if data:
                take = data[: self._remaining]
                self._remaining -= len(take)
                self._push(take)
            if self._remaining == 0:
                self._complete()
        elif self._mode == "close":
            if data:
                self._push(data)
        else:
            self._buf += data
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._chunk_state == "size":
                end = buf.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:  # an endless chunk-size line: refuse, don't buffer it
                        self._fail(httpx.RemoteProtocolError(f"chunk-size line longer than {MAX_CHUNK_LINE} bytes"))
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self._fail(httpx.RemoteProtocolError(f"invalid chunk size {size_text[:20]!r}"))
                    return
                del buf[: end + 2]
                if size == 0:
                    self._chunk_state = "trailer"
                else:
                    self._remaining = size
                    self._chunk_state = "data"
            elif self._chunk_state == "data":
                if not buf:
                    return
                take = bytes(buf[: self._remaining])
                del buf[: len(take)]
                self._remaining -= len(take)
                self._push(take)
                if self._remaining == 0:
                    self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(buf) < 2:
                    return
                del buf[:2]
                self._chunk_state = "size"
            else:  # trailer: ends at an empty line
                end = buf.find(b"\r\n", 0, MAX_HEADER_BYTES + 2)
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        self._fail(httpx.RemoteProtocolError(f"trailer line longer than {MAX_HEADER_BYTES} bytes"))
                    return
                self._trailer_bytes += end + 2
                if self._trailer_bytes > MAX_HEADER_BYTES:
                    self._fail(httpx.RemoteProtocolError(f"trailers longer than {MAX_HEADER_BYTES} bytes"))
                    return
                del buf[: end + 2]
                if end == 0:
                    self._complete()
                    return

    # -- delivery
    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _READ_HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _complete(self) -> None:
        self.body_complete = True
        self._eof = True
        self._wake()

    def _finish_eof(self) -> None:
        if not self.headers_done.done():
            self._fail(self._error or httpx.RemoteProtocolError("server closed the connection without a response"))
            return
        if self._mode == "close":
            self.body_complete = True
        elif not self.body_complete and self._error is None:
            self._error = httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        self._eof = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()  # mark retrieved; the caller re-raises it
        self._eof = True
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_chunk(self) -> bytes | None:
        while not self._chunks:
            if self._eof:
                if self._error is not None and not self.body_complete:
                    err = self._error
                    if isinstance(err, httpx.HTTPError):
                        raise err
                    raise httpx.ReadError(str(err) or type(err).__name__) from err
                return None
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < _READ_HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data


class _Body(httpx.AsyncByteStream):
    def __init__(self, proto: _ResponseProtocol, trace: Any, deadline: float | None):
        self._proto = proto
        self._trace = trace
        self._deadline = deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._trace:
            await self._trace("http11.receive_response_body.started", {})
        try:
            async with asyncio.timeout_at(self._deadline):
                while (chunk := await self._proto.next_chunk()) is not None:
                    yield chunk
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the response body") from None
        if self._trace:
            await self._trace("http11.receive_response_body.complete", {})

    async def aclose(self) -> None:
        if self._proto.transport is not None:
            self._proto.transport.close()


def _deadline(request: httpx.Request) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    values = [v for v in timeouts.values() if v is not None]
    if not values:
        return None
    return asyncio.get_running_loop().time() + max(values)


class RawHTTPTransport(httpx.AsyncBaseTransport):
    """One fresh connection per request, closed with the response.  See the module docstring."""

    def __init__(self, ssl_context: ssl.SSLContext):
        self._ssl = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        url = request.url
        https = url.scheme == "https"
        host = url.host
        port = url.port or (443 if https else 80)
        trace = request.extensions.get("trace")
        deadline = _deadline(request)
        proto = _ResponseProtocol(loop, request.method == "HEAD")
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]

        head = [f"{request.method} ".encode(), url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            if name.lower() not in (b"connection", b"content-length", b"transfer-encoding"):
                head += [name, b": ", value, b"\r\n"]
        if body or request.method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}\r\n".encode())
        head.append(b"Connection: close\r\n\r\n")
        payload = b"".join(head) + body

        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout_at(deadline):
                if trace:
                    await trace("connection.connect_tcp.started", {"host": host, "port": port})
                try:
                    transport, _ = await loop.create_connection(lambda: proto, host, port)
                except socket.gaierror as exc:
                    raise httpx.ConnectError(f"[Errno {exc.errno}] {exc.strerror} ({host})") from exc
                except OSError as exc:
                    raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
                if trace:
                    await trace("connection.connect_tcp.complete", {"return_value": None})
                if https:
                    if trace:
                        await trace("connection.start_tls.started", {})
                    sni = request.extensions.get("sni_hostname") or host
                    try:
                        new = await loop.start_tls(transport, proto, self._ssl, server_hostname=sni)
                    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
                        raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
                    assert new is not None
                    transport = new
                    proto.transport = new
                    if trace:
                        await trace("connection.start_tls.complete", {"return_value": _TLSInfo(new)})
                if trace:
                    await trace("http11.send_request_headers.started", {})
                transport.write(payload)
                if trace:
                    await trace("http11.send_request_headers.complete", {})
                    await trace("http11.receive_response_headers.started", {})
                try:
                    await proto.headers_done
                except httpx.HTTPError:
                    raise
                except OSError as exc:
                    raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
                if trace:
                    await trace("http11.receive_response_headers.complete", {})
        except TimeoutError:
            if transport is not None:
                transport.close()
            if proto.status == 0 and transport is None:
                raise httpx.ConnectTimeout("timed out connecting") from None
            raise httpx.ReadTimeout("timed out waiting for the response") from None
        except BaseException:
            if transport is not None:
                transport.close()
            raise
        return httpx.Response(
            status_code=proto.status, headers=proto.headers, stream=_Body(proto, trace, deadline),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": proto.reason,
                        "network_stream": _TLSInfo(transport)},
        )
