"""Secrets never reach output, in any form.

Distinct canaries go into every secret field of every kind (basic auth, bearer credentials, an
API-key header, SQL passwords and URL userinfo, algod and indexer tokens, consistency sources).
Each target then fails in the ways a hostile or broken peer makes it fail: a server that echoes
every request header back (into a failed assertion, a JSON label, an error body), a redirect to
another host, a refused database login, an unreachable database with the password in its URL.
The test greps /metrics, the status page, /probe?debug=true for every target, the logs in both
formats and check-config's output for each canary as given, URL-encoded and base64-encoded (alone
and as user:password, as a Basic Authorization header carries it).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web
from harness import Stackwatch, http_get, wait_until
from targets import LoopThread, free_port
from expo import find, value as metric

CANARIES = {
    "HTTP_BASIC_PW": "cAnary-basic-pw-1111",
    "HTTP_BEARER": "cAnary-bearer-2222",
    "HTTP_APIKEY": "cAnary-apikey-3333",
    "JSON_BEARER": "cAnary-json-bearer-4444",
    "SQL_PW": "cAnary-sql-pw-5555",
    "SQL_URL": "mysql+pymysql://root:cAnary-sql-url-6666@127.0.0.1:3306/test",
    "ALGOD_TOKEN": "cAnary-algod-token-7777",
    "INDEXER_TOKEN": "cAnary-indexer-token-8888",
    "ALGOD_URL": "",  # set below: the echo server with userinfo
    "CONS_APIKEY": "cAnary-cons-apikey-9999",
    "CONS_SQL_PW": "cAnary-cons-sql-pw-0000",
    "HB_PUSH_TOKEN": "cAnary-push-token-abab",
    "ALGOD_ADMIN_TOKEN": "cAnary-algod-admin-cdcd",
}
SECRET_PARTS = {"HTTP_BASIC_PW": "cAnary-basic-pw-1111", "HTTP_BEARER": "cAnary-bearer-2222",
                "HTTP_APIKEY": "cAnary-apikey-3333", "JSON_BEARER": "cAnary-json-bearer-4444",
                "SQL_PW": "cAnary-sql-pw-5555", "SQL_URL": "cAnary-sql-url-6666",
                "ALGOD_TOKEN": "cAnary-algod-token-7777", "INDEXER_TOKEN": "cAnary-indexer-token-8888",
                "ALGOD_URL": "cAnary-algod-url-pw-1212", "CONS_APIKEY": "cAnary-cons-apikey-9999",
                "CONS_SQL_PW": "cAnary-cons-sql-pw-0000", "HB_PUSH_TOKEN": "cAnary-push-token-abab",
                "ALGOD_ADMIN_TOKEN": "cAnary-algod-admin-cdcd"}


def forms(secret: str, users: tuple[str, ...] = ("admin", "root", "user")) -> list[str]:
    out = [secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()]
    out += [base64.b64encode(f"{u}:{secret}".encode()).decode() for u in users]
    return sorted(set(out))


class Echo:
    """Answers every path with the request's headers as JSON (status from ?status=, default 200);
    /redirect sends the client to the same echo on another address; every request is recorded."""

    def __init__(self) -> None:
        self.lt = LoopThread()
        self.port = free_port()
        self.other_port = free_port()
        self.seen: list[tuple[int, dict[str, str]]] = []
        self.lt.run(self._start())

    async def _start(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            headers = dict(request.headers)
            self.seen.append((request.url.port or 0, headers))
            if request.path == "/redirect":
                raise web.HTTPFound(f"http://127.0.0.2:{self.other_port}/landed")
            status = int(request.query.get("status", "200"))
            body = {"headers": headers, "message": json.dumps(headers), "status": "bad",
                    "items": [{"name": v} for v in headers.values()]}
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        await web.TCPSite(self.runner, "127.0.0.2", self.other_port).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.lt.run(self.runner.cleanup())
        self.lt.close()


@pytest.fixture(scope="module")
def echo():
    e = Echo()
    yield e
    e.close()


def config(echo: Echo, path: Path) -> Path:
    path.write_text(f"""defaults: {{interval: 1s, timeout: 800ms}}
targets:
  - name: http-echo-assert
    kind: http
    url: "{echo.url('/assert')}"
    basic_auth: {{username: admin, password: "${{HTTP_BASIC_PW}}"}}
    headers: {{X-Api-Key: "${{HTTP_APIKEY}}"}}
    assertions: ["$.headers.Authorization == nothing", "$.headers.X-Api-Key == nothing"]
    info: {{auth: $.headers.Authorization, key: $.headers.X-Api-Key}}
  - name: http-echo-bearer-500
    kind: http
    url: "{echo.url('/fail?status=500')}"
    authorization: {{credentials: "${{HTTP_BEARER}}"}}
    headers: {{X-Api-Key: "${{HTTP_APIKEY}}"}}
  - name: http-redirect-elsewhere
    kind: http
    url: "{echo.url('/redirect')}"
    headers: {{X-Api-Key: "${{HTTP_APIKEY}}"}}
    authorization: {{credentials: "${{HTTP_BEARER}}"}}
    assertions: ["$.headers.X-Api-Key == nothing"]
  - name: json-echo
    kind: json
    url: "{echo.url('/json')}"
    authorization: {{credentials: "${{JSON_BEARER}}"}}
    metrics:
      - name: header_items
        path: $.items[*]
        labels: {{header: $.name}}
        value: $.name
        value_map_default: 1
      - {{name: status_text, path: $.message}}
  - name: sql-wrong-password
    kind: sql
    url: mysql+pymysql://root@127.0.0.1:3306/test
    password: "${{SQL_PW}}"
  - name: sql-url-from-env
    kind: sql
    url: "${{SQL_URL}}"
    queries: [{{name: q, sql: "SELECT nope FROM nowhere", values: [nope]}}]
  - name: algorand-echo
    kind: algorand
    algod_url: "${{ALGOD_URL}}"
    algod_token: "${{ALGOD_TOKEN}}"
    algod_admin_token: "${{ALGOD_ADMIN_TOKEN}}"
    indexer_url: "{echo.url('/idx')}"
    indexer_token: "${{INDEXER_TOKEN}}"
  - name: consistency-echo
    kind: consistency
    fields: [total]
    sources:
      - name: api
        http: {{url: "{echo.url('/cons?status=500')}", headers: {{X-Api-Key: "${{CONS_APIKEY}}"}},
                fields: {{total: $.total}}}}
      - name: db
        sql: {{url: "mysql+pymysql://root@127.0.0.1:3306/test", password: "${{CONS_SQL_PW}}",
               query: "SELECT 1 AS total"}}
  - name: heartbeat-canary
    kind: heartbeat
    schedule: {{every: 1h}}
    token: "${{HB_PUSH_TOKEN}}"
""")
    return path


def assert_clean(where: str, text: str) -> None:
    for name, secret in SECRET_PARTS.items():
        for form in forms(secret):
            assert form not in text, f"{name} appears in {where} as {form!r}"


def test_no_secret_in_any_output(echo, tmp_path):
    env = dict(CANARIES)
    env["ALGOD_URL"] = f"http://user:{SECRET_PARTS['ALGOD_URL']}@127.0.0.1:{echo.port}/algod"
    cfg = config(echo, tmp_path / "canary.yml")
    names = ["http-echo-assert", "http-echo-bearer-500", "http-redirect-elsewhere", "json-echo", "sql-wrong-password",
             "sql-url-from-env", "algorand-echo", "consistency-echo", "heartbeat-canary"]
    for fmt in ("logfmt", "json"):
        sw = Stackwatch(cfg, tmp_path, env=env, extra=["--log.format", fmt])
        try:
            def all_failed() -> bool:
                text = sw.metrics()
                return all(metric(text, "stackwatch_probe_success", target=n) is not None for n in names)

            wait_until(all_failed, 20, "a result for every target")
            # the push token travels in a header, in a path, and wrong (a refused push)
            token = CANARIES["HB_PUSH_TOKEN"]
            for path, headers in (("/push/heartbeat-canary/fail?message=oops", {"Authorization": f"Bearer {token}"}),
                                  (f"/push/token/{token}/heartbeat-canary/start", {}),
                                  (f"/push/token/{token}x/heartbeat-canary", {})):
                req = urllib.request.Request(sw.base + path, data=b"", method="POST", headers=headers)
                try:
                    urllib.request.urlopen(req, timeout=10).close()
                except urllib.error.HTTPError as exc:
                    assert exc.code == 403 and path.endswith("x/heartbeat-canary")
            metrics = sw.metrics()
            for n in names:
                assert metric(metrics, "stackwatch_probe_success", target=n) is not None, n
            # Every target failed (each in its own way), and the failures were reported.
            failing = [n for n in names if metric(metrics, "stackwatch_probe_success", target=n) == 0
                       and find(metrics, "stackwatch_probe_failure_reason", target=n)]
            assert set(failing) >= set(names) - {"json-echo", "heartbeat-canary"}, failing
            assert_clean("/metrics", metrics)
            assert_clean("/metrics (OpenMetrics)",
                         http_get(sw.base + "/metrics", headers={"Accept": "application/openmetrics-text"})[2].decode())
            assert_clean("the status page", http_get(sw.base + "/")[2].decode())
            for n in names:
                body = http_get(sw.base + f"/probe?target={n}&debug=true", timeout=10)[2].decode()
                assert "Logs for the probe" in body
                assert_clean(f"/probe?debug=true for {n}", body)
        finally:
            sw.stop()
        log = sw.log()
        assert "target down" in log
        assert_clean(f"the {fmt} log", log)
    # The redirect to another host carried neither the API key nor the bearer token.
    elsewhere = [h for port, h in echo.seen if port == echo.other_port]
    assert elsewhere, "the redirect was followed"
    assert all("X-Api-Key" not in h and "Authorization" not in h for h in elsewhere)
    # check-config, on the valid file and on one with an error in every target.
    ok = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", str(cfg)], capture_output=True, text=True,
                        env={**os.environ, **env}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    outputs = ok.stdout + ok.stderr
    for name, broken_text, expect in (
            ("keys", cfg.read_text().replace("    kind: ", "    bogus_key: 1\n    kind: "), "bogus_key"),
            ("timeout", cfg.read_text().replace("timeout: 800ms", 'timeout: "${HTTP_BEARER}"'), "defaults.timeout")):
        broken = tmp_path / f"broken-{name}.yml"
        broken.write_text(broken_text)
        bad = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", str(broken)], capture_output=True,
                             text=True, env={**os.environ, **env}, timeout=60)
        assert bad.returncode == 1 and expect in bad.stderr, bad.stderr
        outputs += bad.stdout + bad.stderr
    assert_clean("check-config output", outputs)


def test_inline_secrets_are_refused_in_every_kind(tmp_path):
    cases = {
        "header": 'kind: http\n    url: http://x/\n    headers: {X-Api-Key: "literal-key-value"}',
        "http URL": "kind: http\n    url: http://u:literal-pw@x/",
        "sql URL": "kind: sql\n    url: postgresql+psycopg://u:literal-pw@db/x",
        "algod URL": "kind: algorand\n    algod_url: http://u:literal-pw@node:4001",
        "consistency SQL URL": ('kind: consistency\n    fields: [a]\n    sources:\n'
                                '      - {name: s1, sql: {url: "postgresql+psycopg://u:literal-pw@db/x", '
                                'query: "SELECT 1 AS a"}}\n'
                                '      - {name: s2, file: {path: /x.json, fields: {a: $.a}}}'),
        "token": 'kind: algorand\n    algod_url: http://node:4001\n    algod_token: "literal-token-value"',
    }
    for what, body in cases.items():
        cfg = tmp_path / "inline.yml"
        cfg.write_text(f"targets:\n  - name: t\n    {body}\n")
        out = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", str(cfg)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 1, what
        for literal in ("literal-pw", "literal-key-value", "literal-token-value"):
            assert literal not in out.stderr, (what, out.stderr)
        assert "not accepted" in out.stderr, (what, out.stderr)


def test_a_secret_with_a_line_break_is_refused_without_showing_it(tmp_path):
    token = tmp_path / "token"
    token.write_text("first-half-secret\nsecond-half-secret\n")
    cfg = tmp_path / "nl.yml"
    cfg.write_text(f"targets:\n  - {{name: t, kind: http, url: http://x/, "
                   f"authorization: {{credentials_file: {token}}}}}\n")
    out = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "line break" in out.stderr
    assert "half-secret" not in out.stderr
