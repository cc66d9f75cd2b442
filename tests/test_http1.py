"""One HTTP/1.1 exchange (probes/http1.py), against real sockets sending exact response bytes.

Framing and parsing come from httptools (llhttp); these tests pin what a probe sees: bodies in
every framing, interim answers, limits on hostile framing, errors with their reasons, and the
latency taken in the protocol callbacks.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import zlib

import pytest
from stackwatch.probes import http1
from stackwatch.probes.base import ProbeFailure


class CannedServer:
    """Answers every connection with fixed bytes (optionally in pieces), then closes."""

    def __init__(self, pieces: list[bytes], close: bool = True, pause: float = 0.0, delay: float = 0.0):
        self.pieces = pieces
        self.close = close
        self.pause = pause
        self.delay = delay
        self.requests: list[bytes] = []

    async def __aenter__(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n")
                               if x.lower().startswith(b"content-length")), 0)
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                if self.delay:
                    await asyncio.sleep(self.delay)
                for piece in self.pieces:
                    writer.write(piece)
                    await writer.drain()
                    if self.pause:
                        await asyncio.sleep(self.pause)
                if self.close:
                    writer.close()
                else:
                    await asyncio.sleep(10)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


REQUEST = b"GET /path?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def exchange(pieces: list[bytes], payload: bytes = REQUEST, timeout: float = 2.0, limit: int = 1 << 20,
                   head: bool = False, **kw) -> tuple[http1.Exchange, list[bytes]]:
    server = CannedServer(pieces, **kw)
    async with server as port:
        loop = asyncio.get_running_loop()
        ex = await http1.request("127.0.0.1", port, payload, deadline=loop.time() + timeout, body_limit=limit,
                                 head_request=head)
        return ex, server.requests


async def failure(pieces: list[bytes], **kw) -> ProbeFailure:
    with pytest.raises(ProbeFailure) as info:
        await exchange(pieces, **kw)
    return info.value


async def test_content_length_body_headers_and_request_bytes():
    ex, reqs = await exchange([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"])
    assert (ex.status, ex.body, ex.header(b"x-a"), ex.reason) == (200, b"hello", b"b", b"OK")
    assert reqs == [REQUEST]


async def test_chunked_body_split_across_packets_with_extension_and_trailer():
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi", b"ki\r\n5;ext=1\r\npedia\r\n",
              b"0\r\nTrailer: x\r\n\r\n"]
    ex, _ = await exchange(pieces, close=False, pause=0.01)
    assert ex.body == b"Wikipedia"
    assert ex.header(b"trailer") is None  # trailers are bounded, not kept as headers


async def test_close_delimited_body():
    ex, _ = await exchange([b"HTTP/1.1 200 OK\r\n\r\npart one ", b"part two"], pause=0.01)
    assert ex.body == b"part one part two"


async def test_100_continue_is_skipped():
    ex, _ = await exchange([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"])
    assert (ex.status, ex.body) == (201, b"ok")


@pytest.mark.parametrize("raw,head", [
    (b"HTTP/1.1 204 No Content\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 304 Not Modified\r\n\r\n", False),
])
async def test_empty_bodies_complete_without_waiting_for_close(raw, head):
    started = time.monotonic()
    ex, _ = await exchange([raw], head=head, close=False)
    assert ex.body == b"" and time.monotonic() - started < 1.0


async def test_truncated_body_is_an_error():
    f = await failure([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"])
    assert (f.reason, f.message) == ("connection_error", "peer closed connection without sending complete message body")


async def test_not_http_is_an_error():
    f = await failure([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])
    assert f.reason == "connection_error" and f.message.startswith("invalid HTTP response:")


async def test_close_without_response_is_an_error():
    f = await failure([])
    assert f.message == "server closed the connection without a response"


async def test_duplicate_content_length_is_refused():
    f = await failure([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"])
    assert "Duplicate Content-Length" in f.message


async def test_switching_protocols_is_not_an_answer():
    f = await failure([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"])
    assert "switched protocols" in f.message


async def test_timeout_names_the_stage():
    f = await failure([b"HTTP/1.1 200 OK\r\n"], close=False, timeout=0.3)
    assert (f.reason, f.message) == ("timeout", "no complete answer within the timeout (waiting for the response)")
    f = await failure([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close=False, timeout=0.3)
    assert f.message == "no complete answer within the timeout (reading the body)"


async def test_refused_connection():
    loop = asyncio.get_running_loop()
    with pytest.raises(ProbeFailure) as info:
        await http1.request("127.0.0.1", 1, REQUEST, deadline=loop.time() + 1, body_limit=100)
    assert (info.value.reason, info.value.message) == ("connection_refused", "connection refused")


# ------------------------------------------------------------------ hostile framing, bounded


async def test_endless_header_line_is_cut_at_the_limit():
    started = time.monotonic()
    f = await failure([b"HTTP/1.1 200 OK\r\nX-Long: ", *[b"a" * 16384] * 64], close=False, timeout=5)
    assert f.message == f"invalid HTTP response: header block over {http1.MAX_HEADER_BYTES} bytes"
    assert time.monotonic() - started < 2  # refused as it arrives, not at the deadline


async def test_many_header_lines_are_cut_at_the_limit():
    f = await failure([b"HTTP/1.1 200 OK\r\n" + b"X-A: 0123456789\r\n" * 5000 + b"\r\n"])
    assert "header block over" in f.message


async def test_endless_chunk_extension_is_cut():
    f = await failure([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;", *[b"e" * 16384] * 64],
                      close=False, timeout=5)
    assert "bytes of chunk framing or trailers without body data" in f.message


async def test_endless_trailer_is_cut():
    f = await failure([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ",
                       *[b"t" * 16384] * 64], close=False, timeout=5)
    assert "bytes of chunk framing or trailers without body data" in f.message


async def test_huge_chunk_size_is_refused_by_the_parser():
    f = await failure([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 100], close=False)
    assert f.message == "invalid HTTP response: Chunk size overflow"


async def test_declared_length_over_the_limit_fails_before_the_body():
    f = await failure([b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n"], close=False, limit=1000)
    assert (f.reason, f.message) == ("body_too_large", "Content-Length 5000000 is over the body_size_limit of 1000 bytes")


async def test_undeclared_body_stops_at_the_limit():
    f = await failure([b"HTTP/1.1 200 OK\r\n\r\n", *[b"1" * 65536] * 40], close=False, limit=100_000)
    assert (f.reason, f.message) == ("body_too_large", "body is over the body_size_limit of 100000 bytes")


# ------------------------------------------------------------------ content encodings


def test_gzip_and_deflate_are_decoded():
    doc = b'{"status":"healthy"}'
    assert http1.decode(gzip.compress(doc), b"gzip", 1000) == doc
    assert http1.decode(zlib.compress(doc), b"deflate", 1000) == doc
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert http1.decode(raw.compress(doc) + raw.flush(), b"deflate", 1000) == doc  # without the zlib wrapper
    assert http1.decode(gzip.compress(doc[:5]) + gzip.compress(doc[5:]), b"gzip", 1000) == doc  # two members
    assert http1.decode(doc, b"br", 1000) == doc  # not asked for: left as received


def test_a_compression_bomb_never_inflates_past_the_limit():
    bomb = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # 200 MB in ~200 KB
    with pytest.raises(ProbeFailure) as info:
        http1.decode(bomb, b"gzip", 1 << 20)
    assert info.value.reason == "body_too_large"


def test_a_broken_compressed_body_is_named():
    with pytest.raises(ProbeFailure) as info:
        http1.decode(b"not gzip at all", b"gzip", 1000)
    assert info.value.message.startswith("invalid HTTP response: cannot decode the body")
    with pytest.raises(ProbeFailure) as info:
        http1.decode(gzip.compress(b"x" * 1000)[:-12], b"gzip", 10_000)
    assert info.value.message == "invalid HTTP response: truncated compressed body"


# ------------------------------------------------------------------ latency from the callbacks


async def test_latency_excludes_work_queued_behind_the_response():
    """The answer arrives while the loop is busy; the exporter then has 300 ms of its own work
    queued before the waiting probe resumes.  The measured latency is when the answer arrived,
    not when the probe got to look at it."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:  # in a thread: it answers at 50 ms whatever the test's loop is doing
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            time.sleep(0.05)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        loop.call_later(0.02, time.sleep, 0.1)  # the loop is busy from 20 to 120 ms: the answer comes at 50
        loop.call_later(0.06, time.sleep, 0.3)  # due at 60 ms: runs right after the answer's callback
        started = time.monotonic()
        ex = await http1.request("127.0.0.1", listener.getsockname()[1], REQUEST, deadline=loop.time() + 5,
                                 body_limit=100)
        wall = time.monotonic() - started
    finally:
        thread.join(5)
        listener.close()
    latency = ex.t_done - ex.t_start
    assert wall > 0.4  # the probe itself resumed after the queued 300 ms
    assert 0.05 <= latency < 0.2, (latency, wall)  # the answer's own time (plus the first busy stretch)
