"""kind: http -- an HTTP service: status, latency per phase, TLS expiry, body checks, JSON health bodies.

Option names follow blackbox_exporter's http module where they fit.  JSON health bodies get
Gatus-style assertions (``$.status == healthy``) and chosen fields can become an info metric
(``info: {version: $.version, feature: $.features}`` gives one series per feature).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, PlainValidator

from stackwatch.config import TargetConfig
from stackwatch.probes.base import (
    Family,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeResult,
    Reason,
    sanitize_label_value,
)
from stackwatch.probes.httpclient import HTTPClients, HTTPRequest, fetch
from stackwatch.probes.jsonquery import (
    Assertion,
    JSONPathField,
    compile_assertion,
    parse_json,
)


def _regexp(v: Any) -> re.Pattern[str]:
    if isinstance(v, re.Pattern):
        return v
    if not isinstance(v, str):
        raise ValueError(f"expected a regular expression, got {v!r}")
    try:
        return re.compile(v)
    except re.error as exc:
        raise ValueError(f'invalid regular expression "{v}": {exc}') from None


Regexp = Annotated[re.Pattern[str], PlainValidator(_regexp), PlainSerializer(lambda p: p.pattern, return_type=str)]
AssertionT = Annotated[
    Assertion,
    PlainValidator(lambda v: v if isinstance(v, Assertion) else compile_assertion(v)),
    PlainSerializer(lambda a: a.text, return_type=str),
]

MAX_INFO_VALUES = 64


class HTTPTarget(TargetConfig, HTTPRequest):
    """An HTTP endpoint to probe."""

    kind: Literal["http"]
    fail_if_body_matches_regexp: list[Regexp] = Field(default_factory=list)
    fail_if_body_not_matches_regexp: list[Regexp] = Field(default_factory=list)
    assertions: list[AssertionT] = Field(default_factory=list)
    """Conditions on the JSON body, e.g. "$.status == healthy", "len($.features) > 0"."""
    info: dict[str, JSONPathField] = Field(default_factory=dict)
    """Info metric fields: key -> JSON path; a list value gives one series per element."""


STATUS = Family("stackwatch_http_status_code", "gauge", "HTTP status code of the last response (0 if none).")
PHASE = Family("stackwatch_http_phase_duration_seconds", "gauge",
               "Time spent in each phase of the last HTTP request, summed over redirects.")
BODY = Family("stackwatch_http_body_size_bytes", "gauge", "Size of the last (decoded) response body.")
REDIRECTS = Family("stackwatch_http_redirects", "gauge", "Redirects followed by the last request.")
CERT = Family("stackwatch_http_tls_cert_expiry_timestamp_seconds", "gauge",
              "Expiry of the server's leaf TLS certificate, as a Unix timestamp.")
TLSVER = Family("stackwatch_http_tls_version_info", "gauge", "TLS version negotiated by the last request.")
ASSERT = Family("stackwatch_http_assertion_success", "gauge",
                "1 if the JSON assertion held on the last response body, 0 if not.", healthy=1, failing="the assertion {assertion} does not hold")
INFO = Family("stackwatch_http_body_info", "gauge", "Fields of the JSON body chosen in the target's info block.")


async def probe_http(t: HTTPTarget, ctx: ProbeContext) -> ProbeResult:
    try:
        resp = await fetch(t, ctx, ctx.state)
    except ProbeFailure as exc:
        ctx.sample(STATUS, 0)
        return ctx.failure(exc.reason, exc.message)

    ctx.latency = resp.elapsed
    ctx.sample(STATUS, resp.status)
    p = resp.phases
    for phase, value in (("connect", p.connect), ("tls", p.tls), ("processing", p.processing), ("transfer", p.transfer)):
        ctx.sample(PHASE, value, phase=phase)
    ctx.sample(BODY, len(resp.body))
    ctx.sample(REDIRECTS, resp.redirects)
    if p.cert_expiry is not None:
        ctx.sample(CERT, p.cert_expiry)
    if p.tls_version:
        ctx.sample(TLSVER, 1, version=p.tls_version)

    try:
        t.check_status(resp.status)
    except ProbeFailure as exc:
        return ctx.failure(exc.reason, exc.message)

    text = resp.body.decode("utf-8", "replace") if (t.fail_if_body_matches_regexp or t.fail_if_body_not_matches_regexp) else ""
    for rx in t.fail_if_body_matches_regexp:
        if rx.search(text):
            return ctx.failure(Reason.BODY_REGEXP, f"body matches fail_if_body_matches_regexp /{rx.pattern}/")
    for rx in t.fail_if_body_not_matches_regexp:
        if not rx.search(text):
            return ctx.failure(Reason.BODY_REGEXP, f"body does not match fail_if_body_not_matches_regexp /{rx.pattern}/")

    if not (t.assertions or t.info):
        return ctx.success()
    try:
        doc = parse_json(resp.body)
    except (ValueError, UnicodeDecodeError) as exc:
        for a in t.assertions:
            ctx.sample(ASSERT, 0, assertion=a.text)
        return ctx.failure(Reason.INVALID_JSON, f"body is not valid JSON: {exc}")

    for key, path in t.info.items():
        values = path.find(doc)
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        for v in values[:MAX_INFO_VALUES]:
            ctx.sample(INFO, 1, key=key, value=sanitize_label_value(v))
        if len(values) > MAX_INFO_VALUES:
            ctx.log(f"info {key}: {len(values)} values, kept the first {MAX_INFO_VALUES}")

    failed = []
    for a in t.assertions:
        ok, shown = a.check(doc)
        ctx.sample(ASSERT, 1 if ok else 0, assertion=a.text)
        ctx.log(f"assertion {'passed' if ok else 'FAILED'}: {shown}")
        if not ok:
            failed.append(shown)
    if failed:
        return ctx.failure(Reason.ASSERTION, "; ".join(failed))
    return ctx.success()


KIND = ProbeKind(name="http", config_model=HTTPTarget, probe=probe_http, state=HTTPClients)
