"""``POST /push/NAME``: jobs report to their heartbeat check (stackwatch.probes.heartbeat).

Forms (the token either as ``Authorization: Bearer TOKEN`` or in the path)::

    POST /push/NAME                      the run succeeded
    POST /push/NAME/start                the run started
    POST /push/NAME/fail                 the run failed
    POST /push/NAME/<0-255>              the run ended with this exit code (0: success)
    POST /push/token/TOKEN/NAME[/start|/fail|/<code>]

Optional details, as query parameters or a JSON body: ``exit_code``, ``duration`` (seconds the
run took) and ``message`` (kept to 256 characters); a plain-text body is the message.

The push endpoint has its own credentials: a check's token allows reporting to that check and
nothing else, and the web config's passwords do not allow pushing.  A wrong token, an unknown
check and an oversized request get the same 403 (nothing tells a caller which names exist);
each check takes at most RATE reports a second (bursts of BURST), past that 429.  A 200 means
the report is durable in the state store (a crash right after it loses nothing).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from stackwatch.probes.heartbeat import HeartbeatTarget, Row, event_op
from stackwatch.state import StateStore, StoreError

log = logging.getLogger("stackwatch.push")

MAX_BODY = 2048
MAX_MESSAGE = 256
RATE = 5.0
BURST = 20.0
MAX_PENDING = 20_000
"""Pushes waiting for the store at once, past which pushes get 503 (the store is stuck)."""
REFUSAL = "push refused: check the name, the token and the size of the request\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EVENTS = ("success", "start", "fail")


# ------------------------------------------------------------------ the endpoint


class Pusher:
    """Checks by name (every heartbeat of the config, whichever shard probes it), their
    tokens, and a rate limit per check."""

    def __init__(self, store: StateStore, remember: Callable[[Row], None] | None = None):
        self.store = store
        self.remember = remember
        self.checks: dict[str, HeartbeatTarget] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self.pending = 0
        self.accepted = 0
        self.refused = 0
        self.limited = 0
        self._dummy = b"x" * 32
        self.clock = time.time

    def set_checks(self, checks: list[HeartbeatTarget]) -> None:
        self.checks = {c.name: c for c in checks}
        self._buckets = {k: v for k, v in self._buckets.items() if k in self.checks}

    def _token_ok(self, name: str, given: str) -> bool:
        check = self.checks.get(name)
        expected = check.secret_token() if check is not None else self._dummy
        ok = hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)
        return ok and check is not None

    def _allow(self, name: str) -> bool:
        now = time.monotonic()
        tokens, at = self._buckets.get(name, (BURST, now))
        tokens = min(BURST, tokens + (now - at) * RATE)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            return False
        self._buckets[name] = (tokens - 1.0, now)
        return True

    def _refuse(self) -> web.Response:
        self.refused += 1
        return web.Response(status=403, text=REFUSAL)

    async def handle(self, request: web.Request) -> web.Response:
        info = request.match_info
        name = info.get("name", "")
        action = info.get("action", "success")
        given = info.get("token")
        if given is None:
            auth = request.headers.get("Authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if request.content_length is not None and request.content_length > MAX_BODY:
            return self._refuse()
        body = await _read_body(request)
        if body is None or not given or not self._token_ok(name, given):
            return self._refuse()
        try:
            event, exit_code, duration, message = _details(action, request, body)
        except ValueError as exc:
            return web.json_response({"status": "error", "error": str(exc)}, status=400)
        if not self._allow(name):
            self.limited += 1
            return web.json_response({"status": "error", "error": f"more than {RATE:g} reports a second for this check"},
                                     status=429, headers={"Retry-After": "1"})
        if self.pending >= MAX_PENDING:
            return web.json_response({"status": "error", "error": "the state store is behind; retry"},
                                     status=503, headers={"Retry-After": "1"})
        self.pending += 1
        at = self.clock()
        try:
            row = await self.store.run(event_op(name, event, at, exit_code, duration, message))
        except StoreError as exc:
            log.error("push not stored", extra={"check": name, "error": str(exc)})
            return web.json_response({"status": "error", "error": "not stored: the state store failed; retry"},
                                     status=503, headers={"Retry-After": "5"})
        finally:
            self.pending -= 1
        self.accepted += 1
        if self.remember is not None:
            self.remember(row)
        return web.json_response({"status": "ok", "check": name, "event": event, "at": at})


async def _read_body(request: web.Request) -> bytes | None:
    """The body, or None past MAX_BODY (chunked bodies included)."""
    if not request.body_exists:
        return b""
    data = b""
    while True:
        chunk = await request.content.read(MAX_BODY + 1 - len(data))
        if not chunk:
            return data
        data += chunk
        if len(data) > MAX_BODY:
            return None


def _details(action: str, request: web.Request, body: bytes) -> tuple[str, int | None, float | None, str | None]:
    fields: dict[str, Any] = {k: v for k, v in request.query.items() if k in ("exit_code", "duration", "message", "msg")}
    if body.strip():
        if request.content_type == "application/json":
            try:
                doc = json.loads(body)
            except ValueError:
                raise ValueError("the body is not valid JSON") from None
            if not isinstance(doc, dict):
                raise ValueError('the JSON body must be an object like {"exit_code": 1, "message": "..."}')
            fields.update({k: v for k, v in doc.items() if k in ("exit_code", "duration", "message", "msg")})
        else:
            fields.setdefault("message", body.decode("utf-8", "replace"))
    exit_code = _int(fields.get("exit_code"), "exit_code")
    if action not in EVENTS:
        code = _int(action, "the path's exit code (start, fail or 0-255)")
        exit_code = code if exit_code is None else exit_code
        action = "success" if code == 0 else "fail"
    if exit_code is not None and action == "success" and exit_code != 0:
        action = "fail"
    if action == "success" and exit_code is None:
        exit_code = 0
    duration = fields.get("duration")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise ValueError("duration: expected seconds, like 12.5") from None
        if not math.isfinite(duration) or duration < 0 or duration > 366 * 86400:
            raise ValueError("duration: expected seconds between 0 and a year")
    message = fields.get("message", fields.get("msg"))
    if message is not None:
        message = _CONTROL.sub(" ", str(message)).strip()[:MAX_MESSAGE] or None
    return action, exit_code, duration, message


def _int(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an integer 0-255") from None
    if isinstance(value, bool) or not 0 <= number <= 255:
        raise ValueError(f"{what}: expected an integer 0-255")
    return number


def routes(app: web.Application, handle: Callable[[web.Request], Any]) -> None:
    for path in ("/push/{name}", "/push/{name}/{action}", "/push/token/{token}/{name}",
                 "/push/token/{token}/{name}/{action}"):
        app.router.add_post(path, handle)
