"""The lean HTTP/1.1 transport under httpx, against real sockets sending exact response bytes."""

from __future__ import annotations

import asyncio
import gzip
import ssl

import httpx
import pytest
from stackwatch.probes.rawtransport import RawHTTPTransport


class CannedServer:
    """Answers every connection with fixed bytes (optionally in pieces), then closes."""

    def __init__(self, pieces: list[bytes], close: bool = True, pause: float = 0.0):
        self.pieces = pieces
        self.close = close
        self.pause = pause
        self.requests: list[bytes] = []

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")), 0)
            body = await reader.readexactly(length) if length else b""
            self.requests.append(head + body)
            for piece in self.pieces:
                writer.write(piece)
                await writer.drain()
                if self.pause:
                    await asyncio.sleep(self.pause)
            if self.close:
                writer.close()
            else:
                await asyncio.sleep(10)

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=RawHTTPTransport(ssl.create_default_context()))


async def fetch(pieces: list[bytes], method: str = "GET", **kw) -> tuple[httpx.Response, bytes, list[bytes]]:
    server = CannedServer(pieces, **kw)
    async with server as base, client() as c:
        resp = await c.request(method, base + "/path?q=1", timeout=2)
        return resp, resp.content, server.requests


async def test_content_length_body_and_request_line():
    resp, body, reqs = await fetch([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"])
    assert (resp.status_code, body, resp.headers["x-a"], resp.reason_phrase) == (200, b"hello", "b", "OK")
    assert reqs[0].startswith(b"GET /path?q=1 HTTP/1.1\r\n")
    assert b"Connection: close\r\n" in reqs[0] and b"Host: 127.0.0.1:" in reqs[0]


async def test_chunked_body_split_across_packets():
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi", b"ki\r\n5;ext=1\r\npedia\r\n",
              b"0\r\nTrailer: x\r\n\r\n"]
    resp, body, _ = await fetch(pieces, close=False, pause=0.01)
    assert body == b"Wikipedia"


async def test_close_delimited_body():
    resp, body, _ = await fetch([b"HTTP/1.1 200 OK\r\n\r\npart one ", b"part two"], pause=0.01)
    assert body == b"part one part two"


async def test_gzip_is_decoded_by_httpx():
    data = gzip.compress(b'{"status":"healthy"}')
    resp, body, _ = await fetch([b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                                 + str(len(data)).encode() + b"\r\n\r\n" + data])
    assert resp.json() == {"status": "healthy"}


async def test_100_continue_is_skipped():
    resp, body, _ = await fetch([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"])
    assert (resp.status_code, body) == (201, b"ok")


@pytest.mark.parametrize("raw,method", [
    (b"HTTP/1.1 204 No Content\r\n\r\n", "GET"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "HEAD"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET"),
])
async def test_empty_bodies_complete_without_waiting_for_close(raw, method):
    resp, body, _ = await fetch([raw], method=method, close=False)
    assert body == b""


async def test_post_body_is_sent_with_length():
    server = CannedServer([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    async with server as base, client() as c:
        await c.post(base + "/rpc", content=b'{"ping":1}', headers={"Content-Type": "application/json"})
    assert server.requests[0].endswith(b"Content-Length: 10\r\nConnection: close\r\n\r\n{\"ping\":1}")


async def test_truncated_body_is_an_error():
    with pytest.raises(httpx.RemoteProtocolError, match="without sending complete message body"):
        await fetch([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"])


async def test_malformed_status_line_is_an_error():
    with pytest.raises(httpx.RemoteProtocolError, match="malformed status line"):
        await fetch([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])


async def test_close_without_response_is_an_error():
    with pytest.raises(httpx.RemoteProtocolError, match="without a response"):
        await fetch([])


async def test_read_timeout_when_headers_never_come():
    with pytest.raises(httpx.ReadTimeout):
        server = CannedServer([b"HTTP/1.1 200 OK\r\n"], close=False)
        async with server as base, client() as c:
            await c.get(base + "/", timeout=0.3)


async def test_refused_connection_is_a_connect_error():
    with pytest.raises(httpx.ConnectError) as info:
        async with client() as c:
            await c.get("http://127.0.0.1:1/", timeout=1)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
