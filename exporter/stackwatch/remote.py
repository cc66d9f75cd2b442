"""One client for the Prometheus and Alertmanager HTTP APIs stackwatch reads and writes (status
page history and alerts, maintenance silences, ``stackwatch report``).

Those servers are trusted to be stackwatch's own, but not to be well: one that drips bytes,
hangs, answers 100 MB, redirects in a loop or changes the shape of its JSON must cost a page a
few seconds and one line of text, never a hang, a 500 or a traceback.  So every call has

* a **total deadline** (connect, redirects, headers and body together, not per read),
* a **size limit** on the answer, checked against Content-Length and as the body is read,
* at most :data:`MAX_REDIRECTS` redirects,
* its answer **validated against a typed model** of the documented shape before anyone reads it.

Any failure is a :class:`RemoteError` whose message names the server (credentials removed), the
call and what went wrong: ``Prometheus at http://prom:9090: query_range: timed out after 4s``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from stackwatch.redact import redact_url

MAX_REDIRECTS = 3
T = TypeVar("T")


class RemoteError(Exception):
    """A call to Prometheus or Alertmanager that did not give a usable answer."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        """timeout, too_large, http_status, connection, invalid_answer, query_error"""
        self.message = message


@dataclass(frozen=True)
class Limits:
    total: float = 4.0
    """Seconds for the whole call."""
    max_bytes: int = 8 * 1024 * 1024
    """Largest answer read (bytes as received)."""


# --------------------------------------------------------------------------- answer models


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Series(_Loose):
    metric: dict[str, str]
    values: list[tuple[float, str]] = Field(default_factory=list)
    value: tuple[float, str] | None = None


class _PromData(_Loose):
    resultType: str  # noqa: N815 -- the API's name
    result: list[Series]


class _PromAnswer(_Loose):
    status: Literal["success", "error"]
    data: _PromData | None = None
    error: str | None = None
    errorType: str | None = None  # noqa: N815


class AlertStatus(_Loose):
    state: str = ""


class Alert(_Loose):
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: AlertStatus = Field(default_factory=AlertStatus)
    startsAt: str | None = None  # noqa: N815


class Matcher(_Loose):
    name: str
    value: str
    isRegex: bool = False  # noqa: N815
    isEqual: bool = True  # noqa: N815


class SilenceStatus(_Loose):
    state: str = ""


class Silence(_Loose):
    id: str
    matchers: list[Matcher] = Field(default_factory=list)
    createdBy: str = ""  # noqa: N815
    comment: str = ""
    endsAt: str = ""  # noqa: N815
    status: SilenceStatus = Field(default_factory=SilenceStatus)


_PROM = TypeAdapter(_PromAnswer)
_ALERTS = TypeAdapter(list[Alert])
_SILENCES = TypeAdapter(list[Silence])
_ANY = TypeAdapter(Any)


def _problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "the answer"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"


# --------------------------------------------------------------------------- the client


class Remote:
    """One server (``kind``: "Prometheus" or "Alertmanager") at ``url``, with :class:`Limits`."""

    def __init__(self, kind: str, url: str, limits: Limits | None = None):
        self.kind = kind
        self.url = url.rstrip("/")
        self.limits = limits or Limits()
        self._client: httpx.AsyncClient | None = None

    @property
    def shown(self) -> str:
        return f"{self.kind} at {redact_url(self.url)}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                                             timeout=httpx.Timeout(self.limits.total))
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(self, method: str, path: str, what: str, params: Mapping[str, str] | None = None,
                   body: Any = None, expect_json: bool = True) -> Any:
        """The decoded JSON answer of one call (None when ``expect_json`` is false)."""
        limit = self.limits.max_bytes
        try:
            async with asyncio.timeout(self.limits.total):
                async with self._http().stream(method, self.url + path, params=params, json=body) as resp:
                    if resp.status_code >= 400:
                        detail = ""
                        if resp.status_code < 500:  # Prometheus explains a bad query in the body
                            detail = _error_text(await _read(resp, 64 * 1024))
                        raise RemoteError("http_status", f"{self.shown}: {what}: HTTP {resp.status_code}"
                                          + (f": {detail}" if detail else ""))
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise RemoteError("too_large", f"{self.shown}: {what}: answer of {int(declared)} bytes "
                                          f"is over the limit of {limit}")
                    data = await _read(resp, limit)
        except TimeoutError:
            raise RemoteError("timeout", f"{self.shown}: {what}: no complete answer within "
                                         f"{self.limits.total:g}s") from None
        except _TooLarge:
            raise RemoteError("too_large", f"{self.shown}: {what}: answer over the limit of {limit} bytes") from None
        except httpx.TooManyRedirects:
            raise RemoteError("http_status", f"{self.shown}: {what}: more than {MAX_REDIRECTS} redirects") from None
        except (httpx.HTTPError, OSError) as exc:
            raise RemoteError("connection", f"{self.shown}: {what}: {type(exc).__name__}"
                                            + (f": {redact_url(str(exc))[:200]}" if str(exc) else "")) from None
        if not expect_json:
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteError("invalid_answer", f"{self.shown}: {what}: the answer is not JSON ({exc})") from None

    async def typed(self, adapter: TypeAdapter[T], method: str, path: str, what: str,
                    params: Mapping[str, str] | None = None) -> T:
        doc = await self.call(method, path, what, params)
        try:
            return adapter.validate_python(doc)
        except ValidationError as exc:
            raise RemoteError("invalid_answer", f"{self.shown}: {what}: unexpected answer: {_problem(exc)}") from None


class _TooLarge(Exception):
    pass


async def _read(resp: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    data = b"".join(chunks)
    encoding = resp.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        import zlib

        d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            data = d.decompress(data, limit + 1)
        except zlib.error as exc:
            raise httpx.DecodingError(f"cannot decode the {encoding} body: {exc}") from None
        if len(data) > limit or d.unconsumed_tail:
            raise _TooLarge
    return data


def _error_text(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data[:200].decode("utf-8", "replace").strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"][:300]
    return ""


class Prometheus(Remote):
    def __init__(self, url: str, limits: Limits | None = None):
        super().__init__("Prometheus", url, limits)

    async def _series(self, path: str, what: str, params: dict[str, str]) -> list[Series]:
        answer = await self.typed(_PROM, "GET", path, what, params)
        if answer.status != "success" or answer.data is None:
            raise RemoteError("query_error", f"{self.shown}: {what}: {(answer.error or 'query failed')[:300]}")
        return answer.data.result

    async def query(self, expr: str, at: float) -> list[Series]:
        return await self._series("/api/v1/query", "query", {"query": expr, "time": f"{at:.3f}"})

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        return await self._series("/api/v1/query_range", "query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"})


class Alertmanager(Remote):
    def __init__(self, url: str, limits: Limits | None = None):
        super().__init__("Alertmanager", url, limits)

    async def alerts(self, **filters: str) -> list[Alert]:
        return await self.typed(_ALERTS, "GET", "/api/v2/alerts", "alerts", {"active": "true", **filters})

    async def silences(self) -> list[Silence]:
        return await self.typed(_SILENCES, "GET", "/api/v2/silences", "silences")

    async def create_silence(self, silence: dict[str, Any]) -> None:
        await self.call("POST", "/api/v2/silences", "create silence", body=silence)

    async def expire_silence(self, silence_id: str) -> None:
        await self.call("DELETE", f"/api/v2/silence/{silence_id}", "expire silence", expect_json=False)


def run_sync(coro: Any) -> Any:
    """Run one client call from synchronous code (``stackwatch report``)."""
    return asyncio.run(coro)
