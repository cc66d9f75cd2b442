"""HTTP request options and the shared httpx client, used by every probe that speaks HTTP.

Why the client is set up this way (measured, see bench/RESULTS.md):

* One shared ``AsyncClient`` per TLS setting, held by the kind's :class:`HTTPClients` state:
  building an SSL context per probe costs ~19 CPU-ms.
* Fresh connection per probe by default (``max_keepalive_connections=0``), as
  blackbox_exporter does, so a dead listener or a failing handshake is seen, and
  ``Connection: close`` so TIME_WAIT lands on the target.
* Fresh connections go through :class:`~stackwatch.probes.rawtransport.RawHTTPTransport`, a lean
  HTTP/1.1 transport under httpx's API: httpcore's pool bookkeeping is O(pool^2) per request
  and its anyio/h11 layers cost most of a CPU-ms per probe (bench/RESULTS.md).
* Opt-in keep-alive uses httpx's own pooled transport, small (16), behind a semaphore of the
  same size, so requests never queue inside the pool.
* ``sniffio`` is a dependency although nothing imports it directly: without it httpcore (used for
  keep-alive targets) retries a failing ``import sniffio`` on every lock it creates, a filesystem
  search costing ~1 ms per request.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from stackwatch.config import ByteSize, Model, Secret, secret_from
from stackwatch.probes.base import KindState, ProbeContext, ProbeFailure, Reason
from stackwatch.probes.rawtransport import RawHTTPTransport
from stackwatch.redact import EnvStr, is_secret_name, redact_url

KEEPALIVE_POOL = 16


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

    def parsed_url(self) -> httpx.URL:
        if self._parsed is None:
            self._parsed = httpx.URL(self.url)  # a URL httpx cannot parse fails this probe, named
        return self._parsed

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic names the type error
        for name, value in v.items():
            if not isinstance(name, str) or not isinstance(value, str):
                continue
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
                client = ProbeClient(verify=ctx, limits=limits, trust_env=False, http2=False)
            else:
                client = ProbeClient(transport=RawHTTPTransport(ctx), trust_env=False)
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

    def _read_tls(self, stream: Any) -> None:
        sslobj = stream.get_extra_info("ssl_object") if stream is not None else None
        if sslobj is None:
            return
        self.tls_version = sslobj.version()
        der = sslobj.getpeercert(binary_form=True)
        if der:
            # Leaf certificate only: Python 3.11 cannot return the verified chain.
            expiry = x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
            self.cert_expiry = expiry if self.cert_expiry is None else min(self.cert_expiry, expiry)


@dataclass
class Response:
    status: int
    headers: httpx.Headers
    body: bytes
    redirects: int
    http_version: str
    phases: Phases


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


async def fetch(req: HTTPRequest, ctx: ProbeContext, clients: HTTPClients) -> Response:
    """Send the request within the context's deadline; raise ProbeFailure with a reason on any failure.

    Checks the status code and the body size limit.  The body is read in chunks and the
    read stops as soon as the limit is passed, so a huge body never grows memory.
    """
    c = clients.client_for(req)
    phases = Phases()
    headers = dict(req.headers)
    if not req.keep_alive:
        headers.setdefault("Connection", "close")
    auth = None
    if req.basic_auth is not None:
        pw = req.basic_auth.password.get_secret_value() if req.basic_auth.password else ""
        auth = httpx.BasicAuth(req.basic_auth.username, pw)
    if req.authorization is not None:
        creds = req.authorization.credentials
        assert isinstance(creds, SecretStr)
        headers["Authorization"] = f"{req.authorization.type} {creds.get_secret_value()}"
    extensions: dict[str, Any] = {"trace": phases}
    if req.tls_config.server_name:
        extensions["sni_hostname"] = req.tls_config.server_name
    timeout = httpx.Timeout(max(ctx.remaining(), 0.001))
    ctx.log(f"{req.method} {redact_url(req.url)} (timeout {ctx.remaining():.3f}s)")
    if c.gate is not None:
        await c.gate.acquire()
    try:
        async with c.client.stream(
            req.method, req.parsed_url(), headers=headers, content=req.body, auth=auth,
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
            response = Response(resp.status_code, resp.headers, b"".join(chunks), len(resp.history),
                                resp.http_version, phases)
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
        if c.gate is not None:
            c.gate.release()
    ctx.log(f"read {len(response.body)} body bytes")
    return response
