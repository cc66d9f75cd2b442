"""Redis as a data source (redis-py's asyncio client): a cache read as the application reads it.

A field is read from one key: a string holding a number or JSON (``path:`` picks a value), one
field of a hash (``hash_field:``), or the key's length (``length: true``: HLEN, LLEN, SCARD,
ZCARD or STRLEN by the key's type).  For every key used, its TTL is read too (-1: the key never
expires, -2: it does not exist), and stackwatch tracks when the key was last *refreshed*: the
value changed, the TTL went up (a ``SET ... EX`` again), or the key appeared.  A cache that is
no longer refreshed, or whose key never expires, is the usual way a cache drifts from its
database unseen.

Two round trips per probe (TYPE and TTL of every key in one pipeline, then the reads), under the
probe's deadline.  The password comes from ``${ENV}`` or a file, never inline; ``rediss://``
URLs use TLS (``ca_file`` for a private CA).
"""

from __future__ import annotations

import ssl
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from stackwatch.config import Duration, Model, Secret, secret_from
from stackwatch.probes import sqldb
from stackwatch.probes.base import ProbeFailure, Reason
from stackwatch.probes.jsonquery import JSONPathField, parse_json, to_number


class RedisField(Model):
    key: str = Field(min_length=1, max_length=512)
    path: JSONPathField | None = None
    """The key holds JSON: the value at this path (else the key holds a number)."""
    hash_field: str | None = Field(None, min_length=1, max_length=512)
    length: bool = False

    @model_validator(mode="after")
    def _one(self) -> RedisField:
        if sum((self.path is not None, self.hash_field is not None, self.length)) > 1:
            raise ValueError("set at most one of path, hash_field, length")
        return self


class RedisSource(Model):
    url: str = Field(pattern=r"^rediss?://", max_length=2048)
    """redis://host:6379/0, or rediss:// for TLS."""
    password: Secret | None = None
    password_file: str | None = None
    username: str | None = None
    ca_file: str | None = None
    fields: dict[str, RedisField] = Field(min_length=1)
    max_age: dict[str, Duration] = Field(default_factory=dict)
    """Key -> how often the application refreshes it: older than this is stale (an alert)."""

    _keys: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("url", mode="before")
    @classmethod
    def _no_inline_password(cls, v: Any) -> Any:
        return sqldb.no_inline_password(v)

    @model_validator(mode="after")
    def _prepare(self) -> RedisSource:
        object.__setattr__(self, "password", secret_from(self.password, self.password_file, "password"))
        object.__setattr__(self, "password_file", None)
        keys = tuple(dict.fromkeys(f.key for f in self.fields.values()))
        unknown = [k for k in self.max_age if k not in keys]
        if unknown:
            raise ValueError(f'max_age names key "{unknown[0]}", which no field reads')
        self._keys = keys
        return self

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def secrets(self) -> list[str]:
        out = sqldb.url_secrets(self.url)
        if self.password is not None:
            out.append(self.password.get_secret_value())
        return out


class RedisClients:
    """One client (connection pool of one) per source, kept between probes, closed on reload."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[tuple[Any, ...], Any]] = {}

    def client(self, name: str, spec: RedisSource, timeout: float) -> Any:
        import redis.asyncio as aioredis

        ident = (spec.url, spec.password, spec.username, spec.ca_file, timeout)
        held = self._clients.get(name)
        if held is not None and held[0] == ident:
            return held[1]
        kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_connections": 1,
                              "retry_on_timeout": False, "health_check_interval": 0}
        if spec.password is not None:
            kw["password"] = spec.password.get_secret_value()
        if spec.username:
            kw["username"] = spec.username
        if spec.url.startswith("rediss://"):
            kw["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            if spec.ca_file:
                kw["ssl_ca_certs"] = spec.ca_file
        client = aioredis.Redis.from_url(spec.url, **kw)
        if held is not None:
            self._retire(held[1])
        self._clients[name] = (ident, client)
        return client

    def keep_only(self, names: set[str]) -> None:
        for name in [n for n in self._clients if n not in names]:
            self._retire(self._clients.pop(name)[1])

    def _retire(self, client: Any) -> None:
        import asyncio

        try:
            asyncio.get_running_loop().create_task(client.aclose())
        except RuntimeError:  # no loop (shutdown): the sockets close with the process
            pass

    async def close(self) -> None:
        for _, client in self._clients.values():
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 -- closing at shutdown
                pass
        self._clients.clear()


LENGTH_BY_TYPE = {"hash": "hlen", "list": "llen", "set": "scard", "zset": "zcard", "string": "strlen"}


async def read(client: Any, spec: RedisSource) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """(field values, TTL per key, log lines).  Raises ProbeFailure with a reason."""
    import redis.exceptions as rexc

    try:
        pipe = client.pipeline(transaction=False)
        for key in spec.keys:
            pipe.type(key)
            pipe.pttl(key)
        first = await pipe.execute()
        types = {k: _text(first[2 * i]) for i, k in enumerate(spec.keys)}
        # milliseconds; -1 (never expires) and -2 (missing) as they are
        ttls = {k: (lambda ms: ms / 1000 if ms >= 0 else float(ms))(int(first[2 * i + 1])) for i, k in enumerate(spec.keys)}
        pipe = client.pipeline(transaction=False)
        plan: list[tuple[str, RedisField]] = []
        for name, f in spec.fields.items():
            kind = types[f.key]
            if kind == "none":
                continue
            if f.length:
                getattr(pipe, LENGTH_BY_TYPE.get(kind, "strlen"))(f.key)
            elif f.hash_field is not None:
                if kind != "hash":
                    raise ProbeFailure(Reason.EXTRACTION, f"{name}: key {f.key} is a {kind}, not a hash")
                pipe.hget(f.key, f.hash_field)
            else:
                if kind != "string":
                    raise ProbeFailure(Reason.EXTRACTION, f"{name}: key {f.key} is a {kind}; use length or hash_field")
                pipe.get(f.key)
            plan.append((name, f))
        answers = await pipe.execute() if plan else []
    except rexc.AuthenticationError:
        raise ProbeFailure(Reason.AUTH, "Redis refused the credentials") from None
    except rexc.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ProbeFailure(Reason.AUTH, "Redis refused the credentials") from None
        raise ProbeFailure(Reason.QUERY_ERROR, f"Redis error: {str(exc)[:200]}") from None
    except rexc.TimeoutError:
        raise ProbeFailure(Reason.TIMEOUT, "Redis did not answer in time") from None
    except rexc.ConnectionError as exc:
        text = str(exc)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConnectionRefusedError) or "refused" in text.lower() or "Error 111 " in text:
            raise ProbeFailure(Reason.CONNECTION_REFUSED, "connection to Redis refused") from None
        if "ssl" in text.lower() or "certificate" in text.lower():
            raise ProbeFailure(Reason.TLS, f"TLS to Redis failed: {text[:200]}") from None
        raise ProbeFailure(Reason.CONNECTION, f"cannot reach Redis: {text[:200]}") from None
    values: dict[str, float] = {}
    log = []
    missing = [n for n, f in spec.fields.items() if types[f.key] == "none"]
    if missing:
        raise ProbeFailure(Reason.EXTRACTION, f"{missing[0]}: key {spec.fields[missing[0]].key} does not exist")
    for (name, f), raw in zip(plan, answers):
        if raw is None:
            raise ProbeFailure(Reason.EXTRACTION, f"{name}: hash {f.key} has no field {f.hash_field}")
        if f.length:
            values[name] = float(raw)
            continue
        text = _text(raw)
        try:
            if f.path is not None:
                found = f.path.find(parse_json(text.encode()))
                if not found:
                    raise ProbeFailure(Reason.EXTRACTION, f"{name}: nothing at {f.path.text} in key {f.key}")
                values[name] = to_number(found[0])
            else:
                values[name] = to_number(text)
        except ValueError as exc:
            raise ProbeFailure(Reason.EXTRACTION, f"{name} in key {f.key}: {exc}") from None
    log.append("redis: " + ", ".join(f"{k} ttl {v:g}s" for k, v in ttls.items()))
    return values, ttls, log


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
