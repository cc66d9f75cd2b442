"""HTTP request options and the shared httpx client, used by every probe that speaks HTTP.

Why the client is set up this way (measured, see bench/RESULTS.md):

* One shared ``AsyncClient`` per TLS setting, held by the kind's :class:`HTTPClients` state:
  building an SSL context per probe costs ~19 CPU-ms.
* Fresh connection per probe by default (``max_keepalive_connections=0``), as
  blackbox_exporter does, so a dead listener or a failing handshake is seen, and
  ``Connection: close`` so TIME_WAIT lands on the target.
* A probe without keep-alive does not go through httpx at all: its request bytes are built once
  per target (:meth:`HTTPRequest.wire`) and sent by :func:`stackwatch.probes.http1.request`, one
  asyncio Protocol whose response is parsed by httptools (llhttp).  httpx's client layer (request
  and header objects, auth and redirect generators, decoders) cost ~0.3 CPU-ms per probe, most of
  a probe's cost (bench/RESULTS.md).
* httpx takes over only for what needs it: a redirect to follow (from the first hop's answer on;
  hops again go through http1, by :class:`H1Transport`) and keep-alive targets.
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
    headers: tuple[tuple[str, str], ...]
    """The headers in ``payload`` besides Host and Connection (for httpx when a redirect is followed)."""


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
        if self._parsed is None:
            self._parsed = httpx.URL(self.url)  # a URL httpx cannot parse fails this probe, named
        return self._parsed

    def wire(self) -> Wire:
        """The request's bytes, built on the first probe and kept: a probe then writes them as is."""
        if self._wire is None:
            self._wire = build_wire(self)
        return self._wire

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
    def _redirect_headers(self, request: httpx.Request, url: httpx.URL, method: str) -> httpx.Headers:
        # httpx drops Authorization when a redirect leaves the origin; drop every header with a
        # secret's name too (X-Api-Key, Cookie, ...), so a redirect cannot carry a key elsewhere.
        headers = super()._redirect_headers(request, url, method)
        old = request.url
        upgrade = url.host == old.host and old.scheme == "http" and url.scheme == "https"
        if (url.scheme, url.host, url.port) != (old.scheme, old.host, old.port) and not upgrade:
            for name in [n for n in headers if is_secret_name(n)]:
                del headers[name]
        return headers

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
        key = (req.tls_config.key(), req.keep_alive)
        c = self._clients.get(key)
        if c is None or c.client.is_closed:
            ctx = self.ssl_context(req.tls_config)
            if req.keep_alive:
                limits = httpx.Limits(max_connections=KEEPALIVE_POOL, max_keepalive_connections=KEEPALIVE_POOL)
                client = ProbeClient(verify=ctx, limits=limits, trust_env=False, http2=False,
                                     headers={"User-Agent": USER_AGENT})
            else:
                client = ProbeClient(transport=H1Transport(ctx), trust_env=False, headers={"User-Agent": USER_AGENT})
            c = _Client(client, asyncio.Semaphore(KEEPALIVE_POOL) if req.keep_alive else None)
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
    body = req.body.encode() if req.body is not None else b""
    payload = request_bytes(req.method, url, [(k.encode(), v.encode()) for k, v in headers.items()], body)
    return Wire(url.host, url.port or (443 if https else 80), https, payload, tuple(headers.items()))


def request_bytes(method: str, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """One HTTP/1.1 request on a connection we close: request line, Host from the URL, the
    headers (without framing ones), Content-Length where a body is or may be expected."""
    lines = [method.encode() + b" " + url.raw_path + b" HTTP/1.1", b"Host: " + url.netloc]
    lines += [n + b": " + v for n, v in headers if n.lower() not in _HOP_HEADERS]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class H1Transport(httpx.AsyncBaseTransport):
    """httpx's transport for redirect hops: each hop is one :func:`http1.request`, as a first
    request is.  The body limit and deadline come in the request's extensions."""

    def __init__(self, ssl_context: ssl.SSLContext):
        self._ssl = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        https = url.scheme == "https"
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        payload = request_bytes(request.method, url, request.headers.raw, body)
        ext = request.extensions
        limit = ext.get("stackwatch.body_limit", 1024 * 1024)
        ex = await http1.request(
            url.host, url.port or (443 if https else 80), payload,
            deadline=ext["stackwatch.deadline"], body_limit=limit, head_request=request.method == "HEAD",
            ssl_context=self._ssl if https else None, server_hostname=ext.get("sni_hostname"))
        phases = ext.get("trace")
        if isinstance(phases, Phases):
            phases.add(ex)
        content = http1.decode(ex.body, ex.header(b"content-encoding"), limit)
        headers = [(n, v) for n, v in ex.headers if n.lower() != b"content-encoding"]
        return httpx.Response(ex.status, headers=headers, stream=httpx.ByteStream(content),
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": ex.reason})


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


async def _follow(req: HTTPRequest, ctx: ProbeContext, clients: HTTPClients, w: Wire, first: http1.Exchange,
                  phases: Phases) -> Response:
    """The rest of a redirect chain, through httpx (which knows the rules: method changes,
    origin checks, limits), its hops sent by :class:`H1Transport`."""
    client = clients.client_for(req).client
    extensions: dict[str, Any] = {"trace": phases, "stackwatch.deadline": ctx.deadline,
                                  "stackwatch.body_limit": req.body_size_limit}
    if req.tls_config.server_name:
        extensions["sni_hostname"] = req.tls_config.server_name
    request = client.build_request(req.method, req.parsed_url(), headers=list(w.headers), content=req.body,
                                   extensions=extensions)
    answer = httpx.Response(first.status, headers=first.headers, request=request)
    if ctx.verbose:
        ctx.log(f"HTTP {first.status} {first.reason.decode('latin-1')}: following the redirect")
    try:
        nxt = client._build_redirect_request(request, answer)
        resp = await client.send(nxt, follow_redirects=True)
    except httpx.TooManyRedirects:
        raise ProbeFailure(Reason.HTTP_STATUS, "too many redirects") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.RemoteProtocolError) as exc:
        raise ProbeFailure(Reason.HTTP_STATUS, f"cannot follow the redirect: {exc}") from None
    if ctx.verbose:
        ctx.log(f"HTTP {resp.status_code} {resp.reason_phrase} after {len(resp.history) + 1} redirect(s), "
                f"{len(resp.content)} body bytes")
    out = Response(resp.status_code, resp.content, len(resp.history) + 1, "HTTP/1.1", phases,
                   time.monotonic() - first.t_start)
    _unlink(resp)
    return out


_EMPTY = httpx.ByteStream(b"")


def _unlink(resp: httpx.Response) -> None:
    """Break httpx's response <-> stream cycle once the body is read, so that reference
    counting frees the exchange at once (see Exchange.release)."""
    for r in (resp, *resp.history):
        r.stream = _EMPTY


async def _fetch_httpx(req: HTTPRequest, ctx: ProbeContext, clients: HTTPClients) -> Response:
    """A keep-alive target: httpx's own pooled transport."""
    c = clients.client_for(req)
    phases = Phases()
    headers = dict(req.wire().headers)
    extensions: dict[str, Any] = {"trace": phases}
    if req.tls_config.server_name:
        extensions["sni_hostname"] = req.tls_config.server_name
    timeout = httpx.Timeout(max(ctx.remaining(), 0.001))
    ctx.log(f"{req.method} {redact_url(req.url)} (timeout {ctx.remaining():.3f}s, keep-alive)")
    started = time.monotonic()
    assert c.gate is not None
    await c.gate.acquire()
    try:
        async with c.client.stream(
            req.method, req.parsed_url(), headers=headers, content=req.body,
            follow_redirects=req.follow_redirects, timeout=timeout, extensions=extensions,
        ) as resp:
            ctx.log(f"HTTP {resp.status_code} {resp.reason_phrase} after {len(resp.history)} redirect(s)")
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
            response = Response(resp.status_code, b"".join(chunks), len(resp.history), resp.http_version, phases,
                                time.monotonic() - started)
        _unlink(resp)
    except ProbeFailure:
        raise
    except httpx.TimeoutException as exc:
        raise ProbeFailure(Reason.TIMEOUT, f"no complete answer within the timeout ({type(exc).__name__})") from None
    except httpx.TooManyRedirects:
        raise ProbeFailure(Reason.HTTP_STATUS, "too many redirects") from None
    except (httpx.TransportError, OSError, ssl.SSLError) as exc:
        reason, message = _classify(exc)
        raise ProbeFailure(reason, message) from None
    finally:
        c.gate.release()
    ctx.log(f"read {len(response.body)} body bytes")
    return response
