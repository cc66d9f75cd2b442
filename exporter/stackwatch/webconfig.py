"""``--web.config.file``: TLS, client certificates, basic auth and response headers for the
exporter's own endpoints, in the format Prometheus, node_exporter and blackbox_exporter share::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt
      min_version: TLS12
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze

Passwords are bcrypt hashes (``htpasswd -nBC 10 "" | tr -d ':\\n'``).  A verified password is
remembered (as a salted SHA-256 of user and password, never the password), so a scrape every
second costs one hash lookup, not one bcrypt run.  The file is read again on every reload; a bad
file fails the reload and the running settings stay.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt
from pydantic import Field, ValidationError, field_validator

from stackwatch.config import Model
from stackwatch.loader import ConfigError, Problem, by_position, located_problems, parse_yaml, read_text

ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                   "X-XSS-Protection", "Content-Security-Policy")
"""The response headers exporter-toolkit lets a web config set."""

_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
MIN_COST = 4
MAX_WEB_CONFIG_BYTES = 1024 * 1024
"""The largest web config file read."""
MAX_COST = 16

ClientAuth = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]


class TLSServerConfig(Model):
    cert_file: str
    key_file: str
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: str | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None
    cipher_suites: list[str] = Field(default_factory=list)
    """Accepted for compatibility; Python's defaults are used (they exclude weak suites)."""
    curve_preferences: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    client_allowed_sans: list[str] = Field(default_factory=list)

    @field_validator("client_auth_type")
    @classmethod
    def _supported(cls, v: str) -> str:
        if v in ("RequestClientCert", "RequireAnyClientCert"):
            raise ValueError(f"{v} (accepting unverified client certificates) is not supported; "
                             "use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
        return v


class HTTPServerConfig(Model):
    http2: bool = False
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _allowed(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if name not in ALLOWED_HEADERS:
                raise ValueError(f'header "{name[:60]}" cannot be set; allowed: {", ".join(ALLOWED_HEADERS)}')
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} must not contain a line break")
        return v


class WebConfigFile(Model):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt(cls, v: dict[str, str]) -> dict[str, str]:
        for user, hashed in v.items():
            if ":" in user:
                raise ValueError(f'user name "{user[:60]}" must not contain ":"')
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
                raise ValueError(f'the password of user "{user[:60]}" must be a bcrypt hash ($2y$...), '
                                 "not a plain password")
            m = _BCRYPT.fullmatch(hashed)
            if m is None:
                raise ValueError(f'the password hash of user "{user[:60]}" is not a valid bcrypt hash '
                                 "(cost, salt or digest malformed)")
            cost = int(m.group(1))
            if not MIN_COST <= cost <= MAX_COST:
                raise ValueError(f'the password hash of user "{user[:60]}" has cost {cost}; use {MIN_COST} to '
                                 f"{MAX_COST} (each step doubles the time of every login)")
            try:  # the library's own check of the salt: a hash it cannot use fails here, not at login
                bcrypt.checkpw(b"", hashed.encode())
            except ValueError as exc:
                raise ValueError(f'the password hash of user "{user[:60]}" is not usable: {exc}') from None
        return v


_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


def _relative(base: Path, name: str | None) -> str | None:
    """Files named in the web config are relative to the web config's folder, as in Prometheus."""
    if name is None:
        return None
    return str(base / name) if not os.path.isabs(name) else name


@dataclass
class WebConfig:
    """The loaded file, with its TLS context built (files read and checked)."""

    source: str = ""
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    tls: TLSServerConfig | None = None
    base: Path = Path(".")

    @property
    def auth_required(self) -> bool:
        return bool(self.users)

    def ssl_context(self, into: ssl.SSLContext | None = None) -> ssl.SSLContext | None:
        """A server context for these settings; ``into`` updates a running server's context in
        place (new handshakes see the new certificate and client CA)."""
        tls = self.tls
        if tls is None:
            return None
        ctx = into or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(_relative(self.base, tls.cert_file), _relative(self.base, tls.key_file))
            if tls.client_auth_type != "NoClientCert":
                if not tls.client_ca_file:
                    raise ValueError(f"client_auth_type {tls.client_auth_type} needs client_ca_file")
                ctx.load_verify_locations(cafile=_relative(self.base, tls.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS files: {getattr(exc, 'strerror', None) or exc}") from None
        ctx.verify_mode = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                           "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}[tls.client_auth_type]
        ctx.minimum_version = _VERSIONS[tls.min_version]
        if tls.max_version:
            ctx.maximum_version = _VERSIONS[tls.max_version]
        return ctx


def load_web_config(path: str | None) -> WebConfig:
    """Read and check a web config file; ConfigError names the key path and line."""
    if not path:
        return WebConfig()
    loaded, problems = parse_yaml(read_text(path, MAX_WEB_CONFIG_BYTES), path)
    data = loaded.value if loaded.value is not None else {}
    try:
        model = WebConfigFile.model_validate(data)
    except ValidationError as exc:
        problems += located_problems(exc, loaded.marks, WebConfigFile)
        raise ConfigError(path, sorted(problems, key=by_position)) from None
    if problems:
        raise ConfigError(path, problems)
    web = WebConfig(path, {u: h.encode() for u, h in model.basic_auth_users.items()},
                    dict(model.http_server_config.headers), model.tls_server_config, Path(path).resolve().parent)
    try:
        web.ssl_context()  # read and check the files now, not at the first connection
    except ValueError as exc:
        raise ConfigError(path, [Problem("tls_server_config", *loaded.marks.get(("tls_server_config",), (None, None)),
                                         str(exc))]) from None
    return web


class Busy(Exception):
    """Too many logins waiting for a password check: answer 429 and let the caller retry."""


class BasicAuthChecker:
    """Checks ``Authorization: Basic`` against bcrypt hashes, in threads, with a cache.

    bcrypt is slow on purpose, so what callers can make us do is bounded: CONCURRENT checks run
    at a time and at most QUEUE wait; a login past that gets 429 at once (``Busy``), so a flood
    of bad passwords neither burns the CPU nor makes a correct login wait behind it for long.
    A user name that is not configured costs a check against a hash of the slowest configured
    cost, so user names cannot be told apart by timing."""

    MAX_CACHED = 1024
    CONCURRENT = 2
    QUEUE = 16

    def __init__(self) -> None:
        self._salt = os.urandom(16)
        self._ok: dict[bytes, None] = {}
        self._gate = asyncio.Semaphore(self.CONCURRENT)
        self._waiting = 0
        self._dummies: dict[bytes, bytes] = {}
        self.failures = 0
        """Logins refused for a wrong user or password (stackwatch_http_auth_failures_total)."""
        self.busy = 0
        """Logins answered 429 because too many were waiting."""

    def _dummy(self, web: WebConfig) -> bytes:
        """A hash with the cost of the slowest configured one (prefix ``$2b$NN$``)."""
        cost = max((h[4:6] for h in web.users.values()), default=b"10")
        dummy = self._dummies.get(cost)
        if dummy is None:
            dummy = self._dummies[cost] = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=int(cost)))
        return dummy

    async def check(self, web: WebConfig, header: str | None) -> bool:
        """True for a configured user with the right password; Busy when too many wait."""
        if not web.users:
            return True
        if not header or not header.startswith("Basic "):
            self.failures += 1
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self.failures += 1
            return False
        if not sep:
            self.failures += 1
            return False
        hashed = web.users.get(user)
        key = hmac.new(self._salt, b"%s\0%s\0%s" % (user.encode(), password.encode(), hashed or b""),
                       hashlib.sha256).digest()
        if key in self._ok:
            return True
        if self._waiting >= self.CONCURRENT + self.QUEUE:
            self.busy += 1
            raise Busy(f"{self._waiting} logins are being checked; retry in a second")
        against = hashed or await asyncio.to_thread(self._dummy, web)
        self._waiting += 1
        try:
            async with self._gate:
                ok = await asyncio.to_thread(bcrypt.checkpw, password.encode()[:72], against)
        finally:
            self._waiting -= 1
        if ok and hashed is not None:
            if len(self._ok) >= self.MAX_CACHED:
                self._ok.pop(next(iter(self._ok)))
            self._ok[key] = None
            return True
        self.failures += 1
        return False

    def forget(self) -> None:
        """Drop remembered logins (the users or their passwords changed)."""
        self._ok.clear()


async def authorize(checker: BasicAuthChecker, web: WebConfig, header: str | None) -> tuple[int, dict[str, str], str] | None:
    """None when the request may go on, else the (status, headers, text) to answer with: 401 for
    missing or wrong credentials, 429 when too many logins are being checked."""
    try:
        if await checker.check(web, header):
            return None
    except Busy:
        return 429, {"Retry-After": "1"}, "Too many logins are being checked; retry in a second.\n"
    return 401, {"WWW-Authenticate": 'Basic realm="stackwatch"'}, "Unauthorized\n"


def check_reload(old: WebConfig, new: WebConfig, allow_no_auth: bool) -> list[str]:
    """The changes a reload of the web config makes to who may connect (for the log); ConfigError
    when it would turn basic auth off and ``allow_no_auth`` (--web.config.allow-no-auth) is not set."""
    if old.users and not new.users and not allow_no_auth:
        raise ConfigError(new.source or "web config", [Problem(
            "basic_auth_users", None, None,
            "the new web config has no users: loading it would turn authentication off and open every endpoint; "
            "add the users back, or start stackwatch with --web.config.allow-no-auth to allow it")])
    return auth_changes(old, new)


def auth_changes(old: WebConfig, new: WebConfig) -> list[str]:
    """What a reload changes in who may connect, for the log."""
    out = []
    if old.users and not new.users:
        out.append("basic auth turned OFF: every endpoint is open")
    elif new.users and not old.users:
        out.append(f"basic auth turned on ({len(new.users)} users)")
    else:
        added = sorted(set(new.users) - set(old.users))
        removed = sorted(set(old.users) - set(new.users))
        changed = sorted(u for u in set(old.users) & set(new.users) if old.users[u] != new.users[u])
        if added:
            out.append(f"users added: {', '.join(u[:60] for u in added)}")
        if removed:
            out.append(f"users removed: {', '.join(u[:60] for u in removed)}")
        if changed:
            out.append(f"passwords changed: {', '.join(u[:60] for u in changed)}")
    old_ca = old.tls.client_auth_type if old.tls else "NoClientCert"
    new_ca = new.tls.client_auth_type if new.tls else "NoClientCert"
    if old_ca != new_ca:
        out.append(f"client_auth_type {old_ca} -> {new_ca}")
    return out
