"""Real local servers for the probes to hit: an aiohttp app on loopback, in its own thread.

Nothing here is a mock: the probes open real TCP (and TLS) connections to these servers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PAM_TALK_HEALTH = {"status": "healthy", "version": "3.0.0-social", "features": ["social", "esg", "rewards"]}


# Seed 001: the energy pool overview, two partners, one of them low on energy.
ENERGY_OVERVIEW = {
    "status": "healthy",
    "total_partners": 2,
    "blockchain": {"synced": True, "last_sync_block": 48211093},
    "partners": [
        {"partner_id": "P-001", "name": "Green Farm", "current_energy": 8200.0, "max_capacity": 10000.0,
         "level_percent": 82.0, "status": "normal", "unacknowledged_alerts": 0, "auto_refill": True},
        {"partner_id": "P-002", "name": "Sun\u0007Coop", "current_energy": 1250.0, "max_capacity": 10000.0,
         "level_percent": 12.5, "status": "low", "unacknowledged_alerts": 3, "auto_refill": False},
    ],
    "pools_by_region": {"seoul": {"level_percent": "70.1"}, "busan": {"level_percent": 35}},
}

# Seed 002: AI-GO realtime-stats as the API returned it.
AI_GO_STATS = {"totalModels": 63, "activeModels": 51, "operationalModels": 49, "degradedModels": 1,
               "outageModels": 1, "avgAvailability": 96.9, "dataSource": "database"}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port for a server started after the port is chosen (a child process, a config file
    written first): free now, below the ephemeral range, so no outgoing connection of this or
    any process can take it meanwhile, and never handed out twice in one test run."""
    import random
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first = max(1024, low - 12000)
    # tests/run.sh runs its two passes side by side: each takes its own part of the range
    # (STACKWATCH_TEST_PORTS=i/n), so the passes never choose the same port.
    part, parts = (int(x) for x in os.environ.get("STACKWATCH_TEST_PORTS", "0/1").split("/"))
    size = (low - first) // parts
    for port in random.sample(range(first + part * size, first + (part + 1) * size), min(500, size)):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError("no free port below the ephemeral range")



class LoopThread:
    """An asyncio loop in a daemon thread, for servers that must outlive one test's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable, timeout: float = 10):  # type: ignore[type-arg]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# Seed 002 sources: a cache that lags behind the database, and a buggy source (active > total).
AI_GO_CACHED = {"totalModels": 60, "activeModels": 50, "operationalModels": 48, "degradedModels": 1, "outageModels": 1}
AI_GO_BUGGY = {"totalModels": 63, "activeModels": 127, "operationalModels": 49, "degradedModels": 1, "outageModels": 1}

FLAKY_MODE = {"mode": "ok"}
"""What /flaky does: "ok" answers healthy at once, "slow" answers after 5 s (past any test timeout)."""


def default_routes() -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    async def health(_: web.Request) -> web.Response:
        return web.json_response(PAM_TALK_HEALTH)

    async def degraded(_: web.Request) -> web.Response:
        return web.json_response({**PAM_TALK_HEALTH, "status": "degraded", "features": []})

    async def error500(_: web.Request) -> web.Response:
        return web.Response(status=500, text="Internal Server Error")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response(PAM_TALK_HEALTH)

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to reject early
        await resp.prepare(request)
        chunk = b"x" * 65536
        for _ in range(160):  # 10 MiB
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def huge_declared(_: web.Request) -> web.Response:
        return web.Response(body=b"y" * (3 * 1024 * 1024))

    async def invalid_json(_: web.Request) -> web.Response:
        return web.Response(text='{"status": "healthy", ', content_type="application/json")

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>Maintenance</body></html>", content_type="text/html")

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/health")

    async def auth(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer s3cr3t-token-value":
            return web.Response(status=401, text="unauthorized")
        return web.json_response({"status": "healthy"})

    async def flaky(_: web.Request) -> web.Response:
        if FLAKY_MODE["mode"] == "slow":
            await asyncio.sleep(5)
        return web.json_response(PAM_TALK_HEALTH)

    async def energy(_: web.Request) -> web.Response:
        return web.json_response(ENERGY_OVERVIEW)

    async def ai_go(_: web.Request) -> web.Response:
        return web.json_response(AI_GO_STATS)

    async def ai_go_cached(_: web.Request) -> web.Response:
        return web.json_response(AI_GO_CACHED)

    async def ai_go_buggy(_: web.Request) -> web.Response:
        return web.json_response(AI_GO_BUGGY)

    async def many(request: web.Request) -> web.Response:
        n = int(request.query.get("n", "2000"))
        return web.json_response({"items": [{"id": i, "v": i} for i in range(n)]})

    return {
        "/flaky": flaky, "/api/v1/energy/overview": energy, "/ai-go/realtime-stats": ai_go,
        "/ai-go/cached-stats": ai_go_cached, "/ai-go/buggy-stats": ai_go_buggy, "/many": many,
        "/health": health, "/degraded": degraded, "/500": error500, "/slow": slow, "/huge": huge,
        "/huge-declared": huge_declared, "/invalid-json": invalid_json, "/html": html, "/redirect": redirect,
        "/auth": auth,
    }


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A private CA and a leaf for 127.0.0.1/localhost signed by it, valid 30 days."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stackwatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["expiry"] = leaf.not_valid_after_utc.timestamp()  # type: ignore[assignment]
    # A client certificate from the same CA, for mutual TLS tests.
    ckey = ec.generate_private_key(ec.SECP256R1())
    client = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus")]))
              .issuer_name(ca_name).public_key(ckey.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths["client_cert"] = directory / "client.pem"
    paths["client_key"] = directory / "client-key.pem"
    paths["client_cert"].write_bytes(client.public_bytes(serialization.Encoding.PEM))
    paths["client_key"].write_bytes(ckey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return paths


class TargetServers:
    """Plain HTTP, TLS, a listener that accepts and never answers, and a closed port."""

    def __init__(self, tls_dir: Path):
        self.lt = LoopThread()
        self.routes = default_routes()
        self.tls = make_tls_files(tls_dir)
        self.http_port = free_port()
        self.https_port = free_port()
        self.hang_port = free_port()
        self.closed_port = free_port()  # bound once, then released: nothing listens there
        self._hung: list[asyncio.StreamWriter] = []
        self.lt.run(self._start())

    async def _start(self) -> None:
        app = web.Application()
        for path, handler in self.routes.items():
            app.router.add_route("*", path, handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.http_port).start()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.tls["cert"]), str(self.tls["key"]))
        await web.TCPSite(self.runner, "127.0.0.1", self.https_port, ssl_context=ctx).start()

        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._hung.append(writer)  # accept, read nothing, answer nothing

        self.hang_server = await asyncio.start_server(hang, "127.0.0.1", self.hang_port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def https_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.https_port}{path}"

    def close(self) -> None:
        async def stop() -> None:
            self.hang_server.close()
            for w in self._hung:
                w.close()
            await self.runner.cleanup()

        self.lt.run(stop())
        self.lt.close()


def json_body(doc: object) -> bytes:
    return json.dumps(doc).encode()
