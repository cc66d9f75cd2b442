"""The exporter's own port is safe to expose: web config (TLS, client certificates, basic auth,
headers), the lifecycle opt-in, connection limits, malformed requests.  Each case runs against the
real server started as a user starts it, beside a healthy target that must keep being probed."""

from __future__ import annotations

import base64
import os
import resource
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from harness import Stackwatch, http_get, wait_until
from targets import free_port
from expo import find, value as metric

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def healthy_config(tmp: Path, servers, extra: str = "") -> Path:
    cfg = tmp / "stackwatch.yml"
    cfg.write_text(f"""defaults: {{interval: 500ms, timeout: 400ms}}
targets:
  - {{name: healthy, kind: http, url: "{servers.url('/health')}"}}
{extra}""")
    return cfg


def runs(text: str, target: str, result: str) -> int:
    return int(metric(text, "stackwatch_probes_total", target=target, kind="http", result=result) or 0)


def auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class TLSClient:
    def __init__(self, tls: dict, client_cert: bool):
        self.ctx = ssl.create_default_context(cafile=str(tls["ca"]))
        if client_cert:
            self.ctx.load_cert_chain(str(tls["client_cert"]), str(tls["client_key"]))

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5, context=self.ctx) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


def test_web_config_tls_basic_auth_and_headers(servers, tmp_path):
    tls = servers.tls
    web = tmp_path / "web.yml"
    web.write_text(f"""tls_server_config:
  cert_file: {tls['cert']}
  key_file: {tls['key']}
http_server_config:
  headers:
    X-Frame-Options: deny
basic_auth_users:
  prometheus: {HASH}
""")
    sw = Stackwatch(healthy_config(tmp_path, servers), tmp_path, extra=["--web.config.file", str(web)],
                    ready_url="/-/healthy", scheme="https", ca=tls["ca"])
    try:
        https = sw.base.replace("http://", "https://")
        client = TLSClient(tls, client_cert=False)
        # /-/healthy needs no credentials, as in Prometheus; everything else does.
        assert client.get(https + "/-/healthy")[0] == 200
        for path in ("/metrics", "/", "/probe?target=healthy", "/-/ready"):
            status, headers, _ = client.get(https + path)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        assert client.get(https + "/metrics", auth("prometheus", "wrong"))[0] == 401
        assert client.get(https + "/metrics", auth("nobody", PASSWORD))[0] == 401
        assert client.get(https + "/metrics", {"Authorization": "Basic !!notbase64"})[0] == 401
        wait_until(lambda: find(client.get(https + "/metrics", auth("prometheus", PASSWORD))[2], "stackwatch_probe_success"),
                   10, "first probe")
        status, headers, body = client.get(https + "/metrics", auth("prometheus", PASSWORD))
        assert status == 200 and find(body, "stackwatch_probe_success")
        assert headers["X-Frame-Options"] == "deny"
        # The cached check answers the second scrape without another bcrypt run.
        started = time.monotonic()
        for _ in range(20):
            assert client.get(https + "/-/ready", auth("prometheus", PASSWORD))[0] == 200
        assert time.monotonic() - started < 5
        # Plain HTTP against the TLS port gets no answer it could read.
        with pytest.raises((OSError, urllib.error.URLError)):
            urllib.request.urlopen(sw.base + "/-/healthy", timeout=3).read()
        # The healthy target went on being probed throughout.
        text = client.get(https + "/metrics", auth("prometheus", PASSWORD))[2].decode()
        assert runs(text, "healthy", "success") >= 1 and runs(text, "healthy", "failure") == 0
        assert HASH not in sw.log() and PASSWORD not in sw.log()
    finally:
        sw.stop()


def test_mutual_tls_requires_a_client_certificate(servers, tmp_path):
    tls = servers.tls
    web = tmp_path / "web.yml"
    web.write_text(f"""tls_server_config:
  cert_file: {tls['cert']}
  key_file: {tls['key']}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {tls['ca']}
""")
    sw = Stackwatch(healthy_config(tmp_path, servers), tmp_path, extra=["--web.config.file", str(web)],
                    scheme="https", ca=tls["ca"], client_cert=True)
    try:
        https = sw.base.replace("http://", "https://")
        assert TLSClient(tls, client_cert=True).get(https + "/metrics")[0] == 200
        with pytest.raises((ssl.SSLError, OSError, urllib.error.URLError)):
            TLSClient(tls, client_cert=False).get(https + "/metrics")
    finally:
        sw.stop()


def test_bad_web_config_is_refused_with_its_location(servers, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: plaintext-password\n")
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "--config.file", str(healthy_config(tmp_path, servers)),
                           "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "basic_auth_users (line 1, column 1): the password of user \"alice\" must be a bcrypt hash" in proc.stderr
    assert "plaintext-password" not in proc.stderr


def test_reload_needs_the_lifecycle_flag_and_refuses_cross_site(servers, tmp_path):
    cfg = healthy_config(tmp_path, servers)
    off = Stackwatch(cfg, tmp_path)
    try:
        req = urllib.request.Request(off.base + "/-/reload", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 403 and b"--web.enable-lifecycle" in info.value.read()
    finally:
        off.stop()
    on = Stackwatch(cfg, tmp_path, extra=["--web.enable-lifecycle"])
    try:
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
            req = urllib.request.Request(on.base + "/-/reload", data=b"", method="POST", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=5)
            assert info.value.code == 403, headers
        host = on.base.removeprefix("http://")
        req = urllib.request.Request(on.base + "/-/reload", data=b"", method="POST",
                                     headers={"Origin": f"http://{host}"})
        assert urllib.request.urlopen(req, timeout=5).status == 200
        # An unknown /probe target does not list the configured ones.
        status, _, body = http_get(on.base + "/probe?target=nope")
        assert status == 404 and b"healthy" not in body
    finally:
        on.stop()


def _lower_nofile(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def test_idle_and_slow_connections_cannot_starve_probes(servers, tmp_path):
    """Under a 256 open-file limit, 400 connections that never send a request head are closed
    (at accept past the cap, after the head timeout otherwise); the probes and a normal client
    are served throughout."""
    cfg = healthy_config(tmp_path, servers, "".join(
        f'  - {{name: h{i}, kind: http, url: "{servers.url("/health")}"}}\n' for i in range(20)))
    sw = Stackwatch(cfg, tmp_path, extra=["--web.read-header-timeout", "1", "--web.idle-timeout", "2"],
                    preexec_fn=_lower_nofile(256))
    held: list[socket.socket] = []
    try:
        wait_until(lambda: runs(sw.metrics(), "healthy", "success") >= 1, 10, "first probe")
        before = sw.metrics()
        port = int(sw.base.rsplit(":", 1)[1])
        for i in range(400):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a head: slowloris
            held.append(s)
        # A normal client is served at once even with the slots full or freed.
        started = time.monotonic()
        wait_until(lambda: http_get(sw.base + "/-/healthy", timeout=3)[0] == 200, 10, "healthy while flooded")
        assert time.monotonic() - started < 4
        time.sleep(2.5)  # past the head timeout: the silent and slow ones are gone
        text = sw.metrics()
        open_now = metric(text, "stackwatch_http_connections_open")
        assert open_now <= 3  # this scrape's own connection, perhaps a lingering one
        refused = metric(text, "stackwatch_http_connections_refused_total")
        timeouts = metric(text, "stackwatch_http_header_timeouts_total")
        assert refused + timeouts >= 390
        for name in ["healthy", *(f"h{i}" for i in range(20))]:
            assert runs(text, name, "failure") == runs(before, name, "failure"), name
            assert runs(text, name, "success") > runs(before, name, "success"), name
        # The listener may hit the limit at accept() during the flood (asyncio logs it and retries);
        # what matters is that no probe failed for it.
        assert not [ln for ln in sw.log().splitlines() if "target down" in ln and "Too many open files" in ln]
    finally:
        for s in held:
            s.close()
        sw.stop()


def test_malformed_requests_get_400_and_no_traceback(servers, tmp_path):
    sw = Stackwatch(healthy_config(tmp_path, servers), tmp_path, extra=["--log.level", "info"])
    try:
        port = int(sw.base.rsplit(":", 1)[1])
        garbage = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40) + b"\r\n\r\n",
                   b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
                   b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                   b"GET / HTTP/9.9\r\n\r\n",
                   b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                   b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"]
        answers = []
        for payload in garbage * 20:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(payload)
                answers.append(s.recv(100))
        assert all(a[:15] in (b"HTTP/1.0 400 Ba", b"HTTP/1.1 400 Ba") for a in answers), {a[:40] for a in answers}
        log = sw.log()
        assert "Traceback" not in log and "level=error" not in log
        assert http_get(sw.base + "/-/healthy")[0] == 200
    finally:
        sw.stop()


def test_reload_of_10k_targets_does_not_stop_serving(servers, tmp_path):
    """The new config is parsed and validated in a thread: /-/healthy keeps answering."""
    targets = "".join(f'  - {{name: t{i}, kind: http, url: "http://127.0.0.1:9/{i}", interval: 1h}}\n'
                      for i in range(10_000))
    cfg = tmp_path / "big.yml"
    cfg.write_text("targets:\n" + targets)
    sw = Stackwatch(cfg, tmp_path, extra=["--web.enable-lifecycle", "--log.level", "info"])
    try:
        cfg.write_text("targets:\n" + targets.replace("interval: 1h", "interval: 2h"))
        import threading

        latencies: list[float] = []
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                t0 = time.monotonic()
                http_get(sw.base + "/-/healthy", timeout=30)
                latencies.append(time.monotonic() - t0)
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.3)
        req = urllib.request.Request(sw.base + "/-/reload", data=b"", method="POST")
        t0 = time.monotonic()
        assert urllib.request.urlopen(req, timeout=120).status == 200
        reload_took = time.monotonic() - t0
        time.sleep(0.3)
        done.set()
        poller.join()
        worst = max(latencies)
        print(f"reload of 10k targets took {reload_took:.2f}s; /-/healthy p100 {worst * 1000:.0f} ms "
              f"over {len(latencies)} polls")
        assert worst < min(1.0, reload_took)
    finally:
        sw.stop()
