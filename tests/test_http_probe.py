"""The HTTP probe against real local servers: each case asserts success, reason and the metrics a user reads."""

from __future__ import annotations

import asyncio
import time

import pytest
from probing import close_clients, run_probe
from stackwatch.series import render_result
from stackwatch.kinds import parse_config
from expo import value as metric


def target(servers, **fields):
    lines = ["targets:", "  - name: t", "    kind: http"]
    fields.setdefault("timeout", "1s")
    for k, v in fields.items():
        lines.append(f"    {k}: {v}")
    return parse_config("\n".join(lines) + "\n", env={"TOKEN": "s3cr3t-token-value"}).targets[0]


async def probe(t):
    try:
        return await run_probe(t)
    finally:
        await close_clients()


def samples(result) -> dict[str, float]:
    """name{extra labels} -> value, for readable assertions."""
    out = {}
    for fam, labels, value in result.samples:
        key = fam.name + ("{" + ",".join(f"{k}={v}" for k, v in labels) + "}" if labels else "")
        out[key] = value
    return out


async def test_healthy_json_passes_assertions_and_exports_info(servers):
    t = target(servers, url=servers.url("/health"),
               assertions='["$.status == healthy", "len($.features) > 0", "$.version =~ ^3\\\\."]',
               info="{version: $.version, feature: $.features}")
    r = await probe(t)
    assert (r.success, r.reason) == (True, None), r.message
    s = samples(r)
    assert s["stackwatch_http_status_code"] == 200
    assert s["stackwatch_http_body_info{key=version,value=3.0.0-social}"] == 1
    assert {k for k in s if "key=feature" in k} == {
        "stackwatch_http_body_info{key=feature,value=social}", "stackwatch_http_body_info{key=feature,value=esg}",
        "stackwatch_http_body_info{key=feature,value=rewards}"}
    assert s["stackwatch_http_assertion_success{assertion=len($.features) > 0}"] == 1
    assert s["stackwatch_http_phase_duration_seconds{phase=connect}"] > 0
    assert 0 < r.duration < 1


async def test_failed_assertion_reports_the_value_it_saw(servers):
    t = target(servers, url=servers.url("/degraded"), assertions='["$.status == healthy", "len($.features) > 0"]')
    r = await probe(t)
    assert (r.success, r.reason.value) == (False, "assertion")
    assert r.message == "$.status (degraded) == healthy; len($.features) (0) > 0"
    assert samples(r)["stackwatch_http_assertion_success{assertion=$.status == healthy}"] == 0


async def test_http_500_fails_with_status(servers):
    r = await probe(target(servers, url=servers.url("/500")))
    assert (r.success, r.reason.value, r.message) == (False, "http_status", "HTTP status 500; expected 2xx")
    assert samples(r)["stackwatch_http_status_code"] == 500


async def test_valid_status_codes_accepts_listed_code(servers):
    r = await probe(target(servers, url=servers.url("/500"), valid_status_codes="[500]"))
    assert r.success


async def test_wrong_body_fails_regexp(servers):
    r = await probe(target(servers, url=servers.url("/html"), fail_if_body_matches_regexp='["(?i)maintenance"]'))
    assert (r.success, r.reason.value) == (False, "body_regexp")
    r = await probe(target(servers, url=servers.url("/html"), fail_if_body_not_matches_regexp='["healthy"]'))
    assert (r.success, r.reason.value) == (False, "body_regexp")


async def test_slow_server_times_out_at_the_deadline(servers):
    t = target(servers, url=servers.url("/slow"), timeout="500ms")
    started = time.monotonic()
    r = await probe(t)
    elapsed = time.monotonic() - started
    assert (r.success, r.reason.value) == (False, "timeout")
    assert 0.45 < elapsed < 1.3  # the server answers only after 3 s


async def test_server_that_accepts_and_never_answers_times_out(servers):
    r = await probe(target(servers, url=f"http://127.0.0.1:{servers.hang_port}/", timeout="300ms"))
    assert (r.success, r.reason.value) == (False, "timeout")
    assert r.duration < 0.8


async def test_refused_port(servers):
    r = await probe(target(servers, url=f"http://127.0.0.1:{servers.closed_port}/"))
    assert (r.success, r.reason.value, r.message) == (False, "connection_refused", "connection refused")
    assert samples(r)["stackwatch_http_status_code"] == 0


async def test_unresolvable_host_is_a_dns_failure(servers):
    r = await probe(target(servers, url="http://stackwatch-no-such-host.invalid/"))
    assert (r.success, r.reason.value) == (False, "dns")


@pytest.mark.parametrize("path", ["/huge", "/huge-declared"])
async def test_huge_body_is_cut_off_at_the_limit(servers, path):
    r = await probe(target(servers, url=servers.url(path), body_size_limit="1MiB", timeout="5s"))
    assert (r.success, r.reason.value) == (False, "body_too_large")
    assert "1048576 bytes" in r.message


async def test_invalid_json(servers):
    r = await probe(target(servers, url=servers.url("/invalid-json"), assertions='["$.status == healthy"]'))
    assert (r.success, r.reason.value) == (False, "invalid_json")
    assert r.message.startswith("body is not valid JSON")


async def test_self_signed_tls_without_ca_file_fails_tls(servers):
    r = await probe(target(servers, url=servers.https_url("/health")))
    assert (r.success, r.reason.value) == (False, "tls")
    assert "CERTIFICATE_VERIFY_FAILED" in r.message


async def test_tls_with_ca_file_succeeds_and_reports_cert_expiry(servers):
    r = await probe(target(servers, url=servers.https_url("/health"), tls_config=f"{{ca_file: {servers.tls['ca']}}}"))
    assert r.success, r.message
    s = samples(r)
    assert s["stackwatch_http_tls_cert_expiry_timestamp_seconds"] == pytest.approx(servers.tls["expiry"], abs=1)
    assert s["stackwatch_http_phase_duration_seconds{phase=tls}"] > 0
    assert any(k.startswith("stackwatch_http_tls_version_info{version=TLSv1.") for k in s)


async def test_tls_insecure_skip_verify_still_reads_expiry(servers):
    r = await probe(target(servers, url=servers.https_url("/health"), tls_config="{insecure_skip_verify: true}"))
    assert r.success, r.message
    assert samples(r)["stackwatch_http_tls_cert_expiry_timestamp_seconds"] == pytest.approx(servers.tls["expiry"], abs=1)


async def test_redirects_followed_and_counted(servers):
    r = await probe(target(servers, url=servers.url("/redirect")))
    assert r.success and samples(r)["stackwatch_http_redirects"] == 1
    r = await probe(target(servers, url=servers.url("/redirect"), follow_redirects="false"))
    assert (r.success, r.reason.value, r.message) == (False, "http_status", "HTTP status 302; expected 2xx")


async def test_bearer_token_from_env_is_sent_and_never_logged(servers):
    t = target(servers, url=servers.url("/auth"), authorization='{credentials: "${TOKEN}"}')
    r = await probe(t)
    assert r.success, r.message
    assert "s3cr3t-token-value" not in "\n".join(r.log)
    no_auth = await probe(target(servers, url=servers.url("/auth")))
    assert (no_auth.reason.value, no_auth.message) == ("http_status", "HTTP status 401; expected 2xx")


async def test_one_hanging_target_does_not_delay_another(servers):
    hang = target(servers, url=f"http://127.0.0.1:{servers.hang_port}/", timeout="2s")
    ok = target(servers, url=servers.url("/health"))
    started = time.monotonic()
    hang_task = asyncio.create_task(run_probe(hang))
    r = await run_probe(ok)
    assert r.success and time.monotonic() - started < 0.5
    assert (await hang_task).reason.value == "timeout"
    await close_clients()


async def test_rendered_result_has_target_and_user_labels(servers):
    t = parse_config(f"""defaults: {{labels: {{env: prod}}}}
targets:
  - {{name: web, kind: http, url: "{servers.url('/health')}", labels: {{team: pam}}}}
""").targets[0]
    r = await probe(t)
    text = "".join(render_result(t, r).values())
    assert metric(text, "stackwatch_probe_success", target="web", kind="http", env="prod", team="pam") == 1
    assert "127.0.0.1" not in text  # no URL in any label


def test_redirect_rules():
    """Where a redirect goes and what goes with it (the project's own loop, no private httpx API)."""
    import httpx
    from stackwatch.probes.base import ProbeFailure
    from stackwatch.probes.httpclient import next_hop

    base = httpx.URL("http://api.example:8080/v1/login?x=1")
    hdrs = [("Authorization", "Bearer t0k"), ("X-Api-Key", "k3y"), ("Content-Type", "application/json"),
            ("Accept", "*/*")]
    # relative Location, same origin: everything kept; 307 keeps method and body
    url, method, headers, body = next_hop(307, base, "/v2/login#frag", "POST", hdrs, b"{}")
    assert (str(url), method, body) == ("http://api.example:8080/v2/login", "POST", b"{}")
    assert headers == hdrs
    # 303 and 301/302 after a POST become a GET without a body or its Content-Type
    for status in (301, 302, 303):
        _, method, headers, body = next_hop(status, base, "/done", "POST", hdrs, b"{}")
        assert (method, body) == ("GET", None) and ("Content-Type", "application/json") not in headers
    assert next_hop(303, base, "/x", "HEAD", hdrs, None)[1] == "HEAD"
    assert next_hop(302, base, "/x", "PUT", hdrs, b"1")[1:4:2] == ("PUT", b"1")
    # leaving the origin drops credentials; an upgrade to https on the same host does not
    _, _, headers, _ = next_hop(302, base, "https://elsewhere.example/", "GET", hdrs, None)
    assert [n for n, _ in headers] == ["Content-Type", "Accept"]
    _, _, headers, _ = next_hop(302, base, "http://api.example:9090/", "GET", hdrs, None)
    assert "Authorization" not in dict(headers)
    _, _, headers, _ = next_hop(301, httpx.URL("http://api.example/"), "https://api.example/", "GET", hdrs, None)
    assert headers == hdrs
    # only http and https
    for bad in ("ftp://files.example/x", "javascript:alert(1)", "file:///etc/passwd"):
        with pytest.raises(ProbeFailure) as info:
            next_hop(302, base, bad, "GET", hdrs, None)
        assert info.value.reason.value == "http_status" and "only http and https" in info.value.message


async def test_a_redirect_loop_fails_with_too_many_redirects(tmp_path):
    """A server that redirects to itself: the probe stops after 10 hops, for plain and keep-alive targets."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hostile_remote.py"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(proc.stdout.readline())["redirect"]
        for extra in ({}, {"keep_alive": "true"}):
            t = target(None, url=f"http://127.0.0.1:{port}/loop", timeout="3s", **extra)
            r = await probe(t)
            assert (r.success, r.reason.value) == (False, "http_status"), r.message
            assert r.message == "too many redirects (more than 10)"
    finally:
        proc.stdin.close()
        proc.wait(10)
