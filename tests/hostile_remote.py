"""A Prometheus and Alertmanager API that misbehaves, one way per port, in a child process.

    python tests/hostile_remote.py   ->  prints one JSON line {mode: port}, serves until stdin closes

Every port answers /api/v1/query, /api/v1/query_range (Prometheus), /api/v2/alerts and
/api/v2/silences (Alertmanager), in its own way:

* ``healthy``: valid, empty answers (no series, no alerts, no silences);
* ``drip``: a 200 head, then one byte of body every half second, for ever;
* ``hang``: reads the request and never answers;
* ``huge``: 200 MB of body, chunked (no Content-Length to refuse it by);
* ``shape``: well-formed JSON of the wrong shape (``"metric": []``, alert labels as a list);
* ``redirect``: 302 to itself, for ever;
* ``error``: 503 with an HTML body.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

SHAPES = {
    "prom": {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": [], "values": "x"}]}},
    "alerts": [{"labels": ["alertname", "X"], "annotations": None}],
    "silences": {"silences": "none"},
}
HUGE_MB = 200
HEALTHY = {
    "prom": {"status": "success", "data": {"resultType": "matrix", "result": []}},
    "alerts": [],
    "silences": [],
}


def answer(status: str, body: bytes, ctype: bytes = b"application/json", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n" + extra + b"\r\n" + body)


def which(path: str) -> str:
    if path.startswith("/api/v1/"):
        return "prom"
    if path.startswith("/api/v2/alerts"):
        return "alerts"
    return "silences"


async def main() -> None:
    ports: dict[str, int] = {}

    def handler(mode: str):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target = head.split(b" ", 2)[:2]
                length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n")
                               if x.lower().startswith(b"content-length")), 0)
                if length:
                    await reader.readexactly(length)
                path = target.decode().split("?", 1)[0]
                if mode == "hang":
                    await reader.read()  # until the client gives up
                    writer.transport.abort()
                    return
                if mode == "drip":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
                    while True:
                        writer.write(b" ")
                        await writer.drain()
                        await asyncio.sleep(0.5)
                if mode == "huge":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                    chunk = b" " * 65536
                    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    for _ in range(HUGE_MB * 16):
                        writer.write(frame)
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                elif mode == "redirect":
                    writer.write(answer("302 Found", b"", extra=b"Location: " + target + b"\r\n"))
                elif mode == "error":
                    writer.write(answer("503 Service Unavailable", b"<html><h1>upstream down</h1></html>", b"text/html"))
                elif method == b"POST":
                    writer.write(answer("200 OK", json.dumps({"silenceID": "x"}).encode()))
                elif method == b"DELETE":
                    writer.write(answer("200 OK", b""))
                else:
                    doc = (SHAPES if mode == "shape" else HEALTHY)[which(path)]
                    writer.write(answer("200 OK", json.dumps(doc).encode()))
                await writer.drain()
                writer.close()  # a graceful close: a reset could drop what the client has not read yet
            except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.LimitOverrunError):
                writer.transport.abort()

        return handle

    for mode in ("healthy", "drip", "hang", "huge", "shape", "redirect", "error"):
        server = await asyncio.start_server(handler(mode), "127.0.0.1", 0, backlog=256)
        ports[mode] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
