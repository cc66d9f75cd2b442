"""Hostile HTTP peers in a child process, so that their sockets never count among the caller's
file descriptors: a test that counts the exporter's (or its own) fds sees only the client side.

    python tests/hostile.py CERT KEY   ->  prints one JSON line {mode: port}, serves until stdin closes

Modes (each on its own loopback port):

* ``silent``: accepts, reads, never answers (closes when the client does);
* ``tls_silent``: completes the TLS handshake, reads, never answers;
* ``tls_mute``: accepts TCP, never starts the TLS handshake;
* ``big``: answers 200 with a 2 MB body (Content-Length), for body-limit failures;
* ``trickle``: sends the head, then one body byte a second;
* ``slam``: closes at once;
* ``redirect``: answers 302 to ``silent``;
* ``ok`` and ``tls_ok``: a healthy JSON answer (``{"status": "healthy"}``), path ``/500`` answers 500;
* ``redirect_ok``: answers 302 to ``ok``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys


async def main(cert: str, key: str) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    ports: dict[str, int] = {}

    async def drain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        writer.transport.abort()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await drain(reader, writer)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b"x" * (2 * 1024 * 1024)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        await drain(reader, writer)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(1)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        writer.transport.abort()

    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/next\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n" % ports["silent"])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        writer.close()

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = b"500 Internal Server Error" if b" /500 " in head.split(b"\r\n", 1)[0] else b"200 OK"
            body = b'{"status": "healthy", "version": "1.0.0"}'
            writer.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (status, len(body), body))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ssl.SSLError):
            pass
        writer.close()

    async def redirect_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/next\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n" % ports["ok"])
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        writer.close()

    servers = []
    for name, handler, ctx in (("silent", silent, None), ("tls_silent", silent, tls), ("tls_mute", silent, None),
                               ("big", big, None), ("trickle", trickle, None), ("slam", slam, None),
                               ("redirect", redirect, None), ("ok", ok, None), ("tls_ok", ok, tls),
                               ("redirect_ok", redirect_ok, None)):
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx, backlog=1024)
        ports[name] = server.sockets[0].getsockname()[1]
        servers.append(server)
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closing our stdin ends us
    os._exit(0)  # connections still open end with the process


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
