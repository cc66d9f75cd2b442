"""HTTP request options and the shared httpx client, used by every probe that speaks HTTP.

Why the client is set up this way (measured, see bench/RESULTS.md):

* One SSL context per TLS setting, held by the kind's :class:`HTTPClients` state: building one
  per probe costs ~19 CPU-ms.
* Fresh connection per probe by default, as blackbox_exporter does, so a dead listener or a
  failing handshake is seen, and ``Connection: close`` so TIME_WAIT lands on the target.
* A probe without keep-alive does not go through httpx at all: its request bytes are built once
  per target (:meth:`HTTPRequest.wire`) and sent by :func:`stackwatch.probes.http1.request`, one
  asyncio Protocol whose response is parsed by httptools (llhttp).  httpx's client layer (request
  and header objects, auth and redirect generators, decoders) cost ~0.3 CPU-ms per probe, most of
  a probe's cost (bench/RESULTS.md).
* Redirects are followed by the project's own loop (:func:`next_hop`: method changes, origin
  checks, at most MAX_REDIRECTS), each hop one http1 exchange; only httpx's public API is used.
* httpx is used only for keep-alive targets (its redirect following off; the same loop decides).
* Opt-in keep-alive uses httpx's own pooled transport, small (16), behind a semaphore of the
  same size, so requests never queue inside the pool.
* ``sniffio`` is a dependency although nothing imports it directly: without it httpcore (used for
  keep-alive targets) retries a failing ``import sniffio`` on every lock it creates, a filesystem
  search costing ~1 ms per request.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from stackwatch import __version__
from stackwatch.config import ByteSize, Model, Secret, secret_from
from stackwatch.probes import http1
from stackwatch.probes.base import KindState, ProbeContext, ProbeFailure, Reason
from stackwatch.redact import EnvStr, is_secret_name, redact_url

KEEPALIVE_POOL = 16
USER_AGENT = f"stackwatch/{__version__}"
REDIRECT_STATUS = (301, 302, 303, 307, 308)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP header name (RFC 9110 token)."""
_HOP_HEADERS = (b"connection", b"content-length", b"transfer-encoding", b"host")


@dataclass(frozen=True, slots=True)
class Wire:
    """A target's request, ready to send: where to connect and the exact bytes."""

    host: str
    port: int
    https: bool
    payload: bytes


class TLSConfig(Model):
    """TLS settings (blackbox_exporter's tls_config names)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    server_name: str | None = None
    min_version: Literal["TLS12", "TLS13"] | None = None

    @model_validator(mode="after")
    def _loadable(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.ca_file or self.cert_file:
            # Fails the config load, not the first probe, on unreadable files.  Checked once per
            # distinct setting in a load: building a context costs ~30 ms (the system CA store).
            _check_files(self.key(), _stamps(self.ca_file, self.cert_file, self.key_file))
        return self

    def key(self) -> tuple[Any, ...]:
        return (self.ca_file, self.cert_file, self.key_file, self.insecure_skip_verify, self.min_version)


def _stamps(*paths: str | None) -> tuple[Any, ...]:
    """Size and modification time of each file, so a changed file is checked again on reload."""
    out = []
    for p in paths:
        try:
            st = os.stat(p) if p else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size) if st else None)
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _check_files(key: tuple[Any, ...], stamps: tuple[Any, ...]) -> None:
    ca_file, cert_file, key_file, _, _ = key
    make_ssl_context(TLSConfig.model_construct(ca_file=ca_file, cert_file=cert_file, key_file=key_file))


class BasicAuth(Model):
    username: str
    password: Secret | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _load(self) -> BasicAuth:
        object.__setattr__(self, "password", secret_from(self.password, self.password_file, "password"))
        return self


class Authorization(Model):
    """An Authorization header: ``type`` (default Bearer) plus credentials."""

    type: str = "Bearer"
    credentials: Secret | None = None
    credentials_file: str | None = None

    @model_validator(mode="after")
    def _load(self) -> Authorization:
        creds = secret_from(self.credentials, self.credentials_file, "credentials")
        if creds is None:
            raise ValueError("set credentials (from ${ENV_VAR}) or credentials_file")
        object.__setattr__(self, "credentials", creds)
        return self


class HTTPRequest(Model):
    """What to send and what counts as an answer.  Shared by kinds http and json."""

    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    valid_status_codes: list[int] = Field(default_factory=list)
    """Accepted status codes; empty means any 2xx."""
    follow_redirects: bool = True
    tls_config: TLSConfig = Field(default_factory=TLSConfig)
    basic_auth: BasicAuth | None = None
    authorization: Authorization | None = None
    body_size_limit: ByteSize = 1024 * 1024
    keep_alive: bool = False
    """Reuse connections between probes (cheaper, but a broken listener may go unseen)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # urlsplit, not httpx.URL: ~30x cheaper, which matters for 50,000 targets.  httpx parses
        # the URL on the target's first probe (parsed_url) and keeps it.
        bad = f'expected an http:// or https:// URL, got "{redact_url(v)[:200]}"'
        try:
            u = urlsplit(v)
            u.port  # noqa: B018 -- raises ValueError on a port out of range
        except ValueError:
            raise ValueError(bad) from None
        if u.scheme not in ("http", "https") or not u.hostname or any(c in v for c in " \r\n\t"):
            raise ValueError(bad)
        if u.password:
            raise ValueError("a password in the URL is not accepted; use basic_auth.password_file or ${ENV_VAR}")
        return v

    _parsed: httpx.URL | None = PrivateAttr(default=None)
    _wire: Wire | None = PrivateAttr(default=None)

    def parsed_url(self) -> httpx.URL:
        """The URL parsed (a URL httpx cannot parse fails the probe, named).  Kept only for targets
        whose probes use it each time (keep-alive): for the others the request bytes are built
        once from it, and a redirect parses it again (~0.3 KB a target)."""
        private = self.__pydantic_private__  # not pydantic's slow private-attribute path (config.py)
        parsed = private["_parsed"]
        if parsed is not None:
            return parsed
        parsed = httpx.URL(self.url)
        if self.keep_alive:
            private["_parsed"] = parsed
        return parsed

    def wire(self) -> Wire:
        """The request's bytes, built on the first probe and kept: a probe then writes them as is."""
        private = self.__pydantic_private__  # not pydantic's slow private-attribute path (config.py)
        wire = private["_wire"]
        if wire is None:
            wire = private["_wire"] = build_wire(self)
        return wire

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic names the type error
        for name, value in v.items():
            if not isinstance(name, str) or not isinstance(value, str):
                continue
            if not _TOKEN.match(name):
                raise ValueError(f"header name {name[:60]!r} is not a valid HTTP header name (letters, digits, "
                                 "and !#$%&'*+.^_`|~-)")
            secret = is_secret_name(name)
            if secret and not isinstance(value, EnvStr):
                raise ValueError(f"header {name[:60]}: inline secrets are not accepted; use ${{ENV_VAR}} "
                                 "(or authorization / basic_auth with a *_file key)")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name[:60]}: the value contains a line break or NUL byte"
                                 + ("" if secret else f' ("{redact_url(value)[:60]}")'))
        return v

    @field_validator("valid_status_codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        for code in v:
            if not 100 <= code <= 599:
                raise ValueError(f"expected HTTP status codes between 100 and 599, got {code}")
        return v

    def status_ok(self, code: int) -> bool:
        return code in self.valid_status_codes if self.valid_status_codes else 200 <= code < 300

    def check_status(self, code: int) -> None:
        """Raise ProbeFailure(http_status) naming the accepted codes when ``code`` is not one."""
        if not self.status_ok(code):
            expected = ", ".join(map(str, self.valid_status_codes)) or "2xx"
            raise ProbeFailure(Reason.HTTP_STATUS, f"HTTP status {code}; expected {expected}")


# --------------------------------------------------------------------------- clients

def make_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        what = getattr(exc, "filename", None) or tls.ca_file or tls.cert_file
        raise ValueError(f"cannot load TLS file {what}: {getattr(exc, 'strerror', None) or exc}") from None
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.min_version:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "TLS13" else ssl.TLSVersion.TLSv1_2
    return ctx


class _NoCookies(httpx.Cookies):
    """Probes are independent: no cookie jar is shared between them (and none is parsed)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def __bool__(self) -> bool:
        return False


class ProbeClient(httpx.AsyncClient):
    """The keep-alive targets' client: no cookie jar (probes are independent)."""

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, value: Any) -> None:
        pass


@dataclass
class _Client:
    client: httpx.AsyncClient
    gate: asyncio.Semaphore | None


class HTTPClients(KindState):
    """The HTTP clients and TLS contexts of one kind, shared by its targets with the same TLS
    settings and keep-alive choice.  Owned by the exporter; closed at shutdown."""

    def __init__(self) -> None:
        self._ssl: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._clients: dict[tuple[Any, ...], _Client] = {}

    def ssl_context(self, tls: TLSConfig) -> ssl.SSLContext:
        key = tls.key()
        ctx = self._ssl.get(key)
        if ctx is None:
            ctx = self._ssl[key] = make_ssl_context(tls)
        return ctx

    def client_for(self, req: HTTPRequest) -> _Client:
        """The pooled client of a keep-alive target's TLS settings."""
        key = (req.tls_config.key(), req.keep_alive)
        c = self._clients.get(key)
        if c is None or c.client.is_closed:
            ctx = self.ssl_context(req.tls_config)
            limits = httpx.Limits(max_connections=KEEPALIVE_POOL, max_keepalive_connections=KEEPALIVE_POOL)
            client = ProbeClient(verify=ctx, limits=limits, trust_env=False, http2=False,
                                 headers={"User-Agent": USER_AGENT})
            c = _Client(client, asyncio.Semaphore(KEEPALIVE_POOL))
            self._clients[key] = c
        return c

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.client.aclose()


# --------------------------------------------------------------------------- fetching


@dataclass
class Phases:
    """Per-phase timings collected from httpcore's trace events, summed over redirects."""

    connect: float = 0.0
    tls: float = 0.0
    processing: float = 0.0
    transfer: float = 0.0
    cert_expiry: float | None = None
    tls_version: str | None = None
    _started: dict[str, float] = field(default_factory=dict)

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        base, _, stage = event.rpartition(".")
        now = time.perf_counter()
        if stage == "started":
            self._started[base] = now
            return
        if stage not in ("complete", "failed"):
            return
        began = self._started.pop(base, None)
        if began is None:
            return
        spent = now - began
        if base == "connection.connect_tcp":
            self.connect += spent
        elif base == "connection.start_tls":
            self.tls += spent
            if stage == "complete":
                self._read_tls(info.get("return_value"))
        elif base in ("http11.send_request_headers", "http11.send_request_body", "http11.receive_response_headers"):
            self.processing += spent
        elif base == "http11.receive_response_body":
            self.transfer += spent

    def add(self, ex: http1.Exchange) -> None:
        """One exchange's phases, from the timestamps its protocol callbacks took."""
        self.connect += ex.t_connected - ex.t_start
        self.tls += ex.t_tls - ex.t_connected
        self.processing += max(0.0, (ex.t_first or ex.t_done) - ex.t_sent)
        self.transfer += max(0.0, ex.t_done - ex.t_first) if ex.t_first else 0.0
        if ex.ssl_object is not None:
            self._read_ssl(ex.ssl_object)

    def _read_tls(self, stream: Any) -> None:
        sslobj = stream.get_extra_info("ssl_object") if stream is not None else None
        if sslobj is not None:
            self._read_ssl(sslobj)

    def _read_ssl(self, sslobj: Any) -> None:
        self.tls_version = sslobj.version()
        der = sslobj.getpeercert(binary_form=True)
        if der:
            expiry = _cert_expiry(der)
            self.cert_expiry = expiry if self.cert_expiry is None else min(self.cert_expiry, expiry)


@functools.lru_cache(maxsize=1024)
def _cert_expiry(der: bytes) -> float:
    # Leaf certificate only: Python 3.11 cannot return the verified chain.  Cached: a target
    # presents the same certificate probe after probe, and parsing it costs ~50 us.
    from cryptography import x509  # imported with the first TLS answer (~15 MB of RSS)

    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    redirects: int
    http_version: str
    phases: Phases
    elapsed: float
    """Seconds from the connection attempt to the last byte of the (last) response, taken in the
    protocol callbacks: the target's latency, without the exporter's own queueing."""


def _classify(exc: BaseException) -> tuple[Reason, str]:
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain)
    if any(isinstance(x, ssl.SSLError | ssl.CertificateError) for x in chain) or "CERTIFICATE_VERIFY_FAILED" in text:
        detail = next((str(x) for x in chain if isinstance(x, ssl.SSLError | ssl.CertificateError)), str(exc))
        return Reason.TLS, f"TLS handshake failed: {detail}"
    if any(isinstance(x, ConnectionRefusedError) for x in chain) or "Connection refused" in text or "Errno 111" in text:
        return Reason.CONNECTION_REFUSED, "connection refused"
    if "Name or service not known" in text or "name resolution" in text or "nodename nor servname" in text:
        return Reason.DNS, f"cannot resolve host: {exc}"
    return Reason.CONNECTION, f"{type(exc).__name__}: {exc or 'connection closed'}"


def build_wire(req: HTTPRequest) -> Wire:
    try:
        url = req.parsed_url()
    except httpx.InvalidURL as exc:
        raise ProbeFailure(Reason.INTERNAL, f"cannot use the URL: {exc}") from None
    https = url.scheme == "https"
    headers = request_headers(req)
    body = req.body.encode() if req.body is not None else b""
    payload = request_bytes(req.method, url, [(k.encode(), v.encode()) for k, v in headers], body)
    return Wire(url.host, url.port or (443 if https else 80), https, payload)


def request_headers(req: HTTPRequest) -> list[tuple[str, str]]:
    """The request's headers besides Host and the framing ones: ours, then the target's (which
    replace ours by name), then its credentials.  Built for the request bytes once, and again
    for a redirect hop or a keep-alive request (not kept: ~0.2 KB a target)."""
    headers: dict[str, str] = {"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
    lower = {k.lower(): k for k in headers}
    for name, value in req.headers.items():
        if name.lower() in ("connection", "content-length", "transfer-encoding", "host"):
            continue  # framing is ours; the Host header follows the URL
        headers.pop(lower.pop(name.lower(), name), None)
        headers[name] = value
    if req.basic_auth is not None:
        pw = req.basic_auth.password.get_secret_value() if req.basic_auth.password else ""
        token = base64.b64encode(f"{req.basic_auth.username}:{pw}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if req.authorization is not None:
        creds = req.authorization.credentials
        assert isinstance(creds, SecretStr)
        headers["Authorization"] = f"{req.authorization.type} {creds.get_secret_value()}"
    return list(headers.items())


def request_bytes(method: str, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """One HTTP/1.1 request on a connection we close: request line, Host from the URL, the
    headers (without framing ones), Content-Length where a body is or may be expected."""
    lines = [method.encode() + b" " + url.raw_path + b" HTTP/1.1", b"Host: " + url.netloc]
    lines += [n + b": " + v for n, v in headers if n.lower() not in _HOP_HEADERS]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def fetch(req: HTTPRequest, ctx: ProbeContext, clients: HTTPClients) -> Response:
    """Send the request within the context's deadline; raise ProbeFailure with a reason on any failure.

    Checks the body size limit (declared and read; decoded bodies too).  The body is read as it
    arrives and the read stops as soon as the limit is passed, so a huge body never grows memory.
    """
    if req.keep_alive:
        return await _fetch_httpx(req, ctx, clients)
    w = req.wire()
    if ctx.verbose:
        ctx.log(f"{req.method} {redact_url(req.url)} (timeout {ctx.remaining():.3f}s)")
    ex = await http1.request(
        w.host, w.port, w.payload, deadline=ctx.deadline, body_limit=req.body_size_limit,
        head_request=req.method == "HEAD", ssl_context=clients.ssl_context(req.tls_config) if w.https else None,
        server_hostname=req.tls_config.server_name)
    phases = Phases()
    phases.add(ex)
    if ex.status in REDIRECT_STATUS and req.follow_redirects and ex.header(b"location"):
        return await _follow(req, ctx, clients, w, ex, phases)
    body = http1.decode(ex.body, ex.header(b"content-encoding"), req.body_size_limit)
    if ctx.verbose:
        ctx.log(f"HTTP {ex.status} {ex.reason.decode('latin-1')}, {len(body)} body bytes")
    return Response(ex.status, body, 0, "HTTP/1.1", phases, ex.t_done - ex.t_start)


MAX_REDIRECTS = 10
"""Hops followed before a probe fails with "too many redirects" (blackbox_exporter's limit)."""


def next_hop(status: int, url: httpx.URL, location: str, method: str, headers: list[tuple[str, str]],
             body: bytes | None) -> tuple[httpx.URL, str, list[tuple[str, str]], bytes | None]:
    """Where a redirect goes and what is sent there, by the rules browsers and HTTP clients follow:
    the Location resolved against the URL answered (fragment dropped), http and https only;
    303, and 301/302 after a POST, become a GET without a body; 307/308 keep method and body.
    Leaving the origin (other scheme, host or port, except http -> https on the same host) drops
    Authorization and every header with a secret's name (X-Api-Key, Cookie, ...), so a redirect
    cannot carry a credential elsewhere."""
    try:
        nxt = url.join(location.strip())
    except (httpx.InvalidURL, ValueError) as exc:
        raise ProbeFailure(Reason.HTTP_STATUS, f"cannot follow the redirect: invalid Location ({exc})") from None
    if nxt.scheme not in ("http", "https") or not nxt.host:
        raise ProbeFailure(Reason.HTTP_STATUS, f"cannot follow the redirect to {redact_url(str(nxt))[:200]}: "
                                               "only http and https URLs are followed")
    if nxt.fragment:
        nxt = nxt.copy_with(fragment=None)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = [(n, v) for n, v in headers if n.lower() not in ("content-type", "content-length")]
    same_origin = (nxt.scheme, nxt.host, nxt.port) == (url.scheme, url.host, url.port)
    upgrade = nxt.host == url.host and url.scheme == "http" and nxt.scheme == "https"
    if not same_origin and not upgrade:
        headers = [(n, v) for n, v in headers if n.lower() != "authorization" and not is_secret_name(n)]
    return nxt, method, headers, body


async def _follow(req: HTTPRequest, ctx: ProbeContext, clients: HTTPClients, w: Wire, first: http1.Exchange,
                  phases: Phases) -> Response:
    """The rest of a redirect chain, each hop one :func:`http1.request` on a fresh connection,
    as the first request was, within the probe's deadline."""
    url, method = req.parsed_url(), req.method
    headers = request_headers(req)
    body = req.body.encode() if req.body is not None else None
    ex, hops = first, 0
    while req.follow_redirects and ex.status in REDIRECT_STATUS and ex.header(b"location"):
        if hops >= MAX_REDIRECTS:
            raise ProbeFailure(Reason.HTTP_STATUS, f"too many redirects (more than {MAX_REDIRECTS})")
        location = ex.header(b"location") or b""
        url, method, headers, body = next_hop(ex.status, url, location.decode("latin-1"), method, headers, body)
        if ctx.verbose:
            ctx.log(f"HTTP {ex.status} {ex.reason.decode('latin-1')}: following the redirect to {redact_url(str(url))}")
        https = url.scheme == "https"
        payload = request_bytes(method, url, [(n.encode(), v.encode()) for n, v in headers], body or b"")
        ex = await http1.request(
            url.host, url.port or (443 if https else 80), payload, deadline=ctx.deadline,
            body_limit=req.body_size_limit, head_request=method == "HEAD",
            ssl_context=clients.ssl_context(req.tls_config) if https else None,
            server_hostname=req.tls_config.server_name)
        phases.add(ex)
        hops += 1
    content = http1.decode(ex.body, ex.header(b"content-encoding"), req.body_size_limit)
    if ctx.verbose:
        ctx.log(f"HTTP {ex.status} {ex.reason.decode('latin-1')} after {hops} redirect(s), {len(content)} body bytes")
    return Response(ex.status, content, hops, "HTTP/1.1", phases, ex.t_done - first.t_start)


_EMPTY = httpx.ByteStream(b"")


def _unlink(resp: httpx.Response) -> None:
    """Break httpx's response <-> stream cycle once the body is read, so that reference
    counting frees the exchange at once (see Exchange.release)."""
    resp.stream = _EMPTY


async def _fetch_httpx(req: HTTPRequest, ctx: ProbeContext, clients: HTTPClients) -> Response:
    """A keep-alive target: httpx's own pooled transport; redirects followed by :func:`next_hop`
    as for the other targets (httpx's own following is off)."""
    c = clients.client_for(req)
    phases = Phases()
    url, method = req.parsed_url(), req.method
    headers = request_headers(req)
    body = req.body.encode() if req.body is not None else None
    extensions: dict[str, Any] = {"trace": phases}
    if req.tls_config.server_name:
        extensions["sni_hostname"] = req.tls_config.server_name
    ctx.log(f"{req.method} {redact_url(req.url)} (timeout {ctx.remaining():.3f}s, keep-alive)")
    started = time.monotonic()
    hops = 0
    response: Response | None = None
    assert c.gate is not None
    await c.gate.acquire()
    try:
        while response is None:
            timeout = httpx.Timeout(max(ctx.remaining(), 0.001))
            async with c.client.stream(method, url, headers=headers, content=body, follow_redirects=False,
                                       timeout=timeout, extensions=extensions) as resp:
                location = resp.headers.get("location")
                if req.follow_redirects and resp.status_code in REDIRECT_STATUS and location:
                    ctx.log(f"HTTP {resp.status_code} {resp.reason_phrase}: following the redirect")
                    if hops >= MAX_REDIRECTS:
                        raise ProbeFailure(Reason.HTTP_STATUS, f"too many redirects (more than {MAX_REDIRECTS})")
                    url, method, headers, body = next_hop(resp.status_code, url, location, method, headers, body)
                    hops += 1
                    continue
                ctx.log(f"HTTP {resp.status_code} {resp.reason_phrase} after {hops} redirect(s)")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > req.body_size_limit:
                    raise ProbeFailure(Reason.BODY_TOO_LARGE,
                                       f"Content-Length {declared} is over the body_size_limit of {req.body_size_limit} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > req.body_size_limit:
                        raise ProbeFailure(Reason.BODY_TOO_LARGE,
                                           f"body is over the body_size_limit of {req.body_size_limit} bytes")
                    chunks.append(chunk)
                response = Response(resp.status_code, b"".join(chunks), hops, resp.http_version, phases,
                                    time.monotonic() - started)
            _unlink(resp)
    except ProbeFailure:
        raise
    except httpx.TimeoutException as exc:
        raise ProbeFailure(Reason.TIMEOUT, f"no complete answer within the timeout ({type(exc).__name__})") from None
    except (httpx.TransportError, OSError, ssl.SSLError) as exc:
        reason, message = _classify(exc)
        raise ProbeFailure(reason, message) from None
    finally:
        c.gate.release()
    ctx.log(f"read {len(response.body)} body bytes")
    return response
