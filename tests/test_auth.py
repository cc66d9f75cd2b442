"""Basic auth that cannot be flooded, read by timing, broken by a bad hash or switched off by an
emptied file: against the real server (and the --workers supervisor), beside a healthy target."""

from __future__ import annotations

import base64
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import bcrypt
import pytest
from harness import Process, Stackwatch, http_get, wait_until
from stackwatch.config import ConfigError
from stackwatch.webconfig import BasicAuthChecker, load_web_config
from test_exposure import healthy_config, runs
from test_workers import free_block
from expo import value as metric

PASSWORD = "correct horse battery staple"
FAST = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("hashed,why", [
    ("$2y$10$" + "!" * 53, "is not a valid bcrypt hash"),
    ("$2y$31$" + "a" * 53, "has cost 31; use 4 to 16"),
    ("$2y$1x$" + "a" * 53, "is not a valid bcrypt hash"),
])
def test_a_malformed_hash_is_refused_at_load(tmp_path, hashed, why):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web))
    text = info.value.render()
    assert "basic_auth_users (line 1, column 1)" in text and why in text and hashed not in text


@pytest.mark.parametrize("content,expected", [
    (b"tls_server_config:\n  cert_file: a\ntls_server_config:\n  key_file: b\n",
     "tls_server_config (line 3, column 1): duplicate key (first set on line 1)"),
    (b"basic_auth_users:\n  alice: \xff\n", "<top level> (line 2, column 10): the file is not UTF-8: byte 0xff"),
    (b"basic_auth_users: [\n", "(line 2, column 1)"),
    (b"http_server_config:\n  headres: {}\n", 'http_server_config.headres (line 2, column 3): unknown key; did you mean "headers"?'),
])
def test_web_config_problems_are_located_like_config_problems(tmp_path, content, expected):
    """The web config goes through the same loader as the target config: one message form, the
    line and column, repeated keys and bad bytes named (not "the file is not UTF-8" alone)."""
    web = tmp_path / "web.yml"
    web.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_web_config(str(web))
    assert str(web) in info.value.render() and expected in info.value.render(), info.value.render()


def test_unknown_users_cost_what_the_slowest_known_one_does():
    """The hash an unknown user is checked against has the cost of the slowest configured hash,
    so a login for a name that does not exist takes as long as one that does."""
    checker = BasicAuthChecker()
    web = load_web_config(None)
    web.users = {"fast": FAST.encode(), "slow": bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=11))}
    assert checker._dummy(web)[:7] == b"$2b$11$"
    web.users = {"fast": FAST.encode()}
    assert checker._dummy(web)[:7] == b"$2b$04$"


def test_bad_hash_or_emptied_file_on_reload_keeps_the_running_settings(servers, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {FAST}\n")
    sw = Stackwatch(healthy_config(tmp_path, servers), tmp_path, extra=["--web.config.file", str(web)],
                    ready_url="/-/healthy")
    alice = basic("alice", PASSWORD)
    try:
        wait_until(lambda: get(sw.base + "/metrics", alice)[0] == 200, 10, "alice logs in")
        # A hash bcrypt cannot use: the reload fails where the file is read, logins keep working.
        web.write_text("basic_auth_users:\n  alice: '$2y$10$" + "!" * 53 + "'\n")
        sw.signal(signal.SIGHUP)
        wait_until(lambda: "is not a valid bcrypt hash" in sw.log(), 10, "the refused reload")
        assert get(sw.base + "/metrics", alice)[0] == 200
        # An emptied file would open every endpoint: refused without --web.config.allow-no-auth.
        for text in ("{}\n", ""):
            web.write_text(text)
            before = sw.log().count("would turn authentication off")
            sw.signal(signal.SIGHUP)
            wait_until(lambda: sw.log().count("would turn authentication off") > before, 10, "the refused reload")
            assert get(sw.base + "/metrics")[0] == 401
            assert get(sw.base + "/metrics", alice)[0] == 200
        # A real change is applied and logged: bob added, alice removed.
        web.write_text(f"basic_auth_users:\n  bob: {FAST}\n")
        sw.signal(signal.SIGHUP)
        wait_until(lambda: get(sw.base + "/metrics", basic("bob", PASSWORD))[0] == 200, 10, "bob logs in")
        assert get(sw.base + "/metrics", alice)[0] == 401
        assert "users added: bob" in sw.log() and "users removed: alice" in sw.log()
        text = get(sw.base + "/metrics", basic("bob", PASSWORD))[2].decode()
        assert runs(text, "healthy", "success") >= 1 and runs(text, "healthy", "failure") == 0
    finally:
        sw.stop()


def test_auth_can_be_turned_off_by_reload_only_when_allowed(servers, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {FAST}\n")
    sw = Stackwatch(healthy_config(tmp_path, servers), tmp_path,
                    extra=["--web.config.file", str(web), "--web.config.allow-no-auth"], ready_url="/-/healthy")
    try:
        assert get(sw.base + "/metrics")[0] == 401
        web.write_text("{}\n")
        sw.signal(signal.SIGHUP)
        wait_until(lambda: get(sw.base + "/metrics")[0] == 200, 10, "the open endpoint")
        assert "basic auth turned OFF" in sw.log()
    finally:
        sw.stop()


def test_a_flood_of_bad_logins_is_bounded_and_a_good_one_gets_through(servers, tmp_path):
    slow = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()  # ~50-100 ms a check
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {slow}\n")
    sw = Stackwatch(healthy_config(tmp_path, servers), tmp_path, extra=["--web.config.file", str(web)],
                    ready_url="/-/healthy")
    statuses: list[int] = []
    retry_after: list[str] = []
    lock = threading.Lock()

    def bad(i: int) -> None:
        status, headers, _ = get(sw.base + "/metrics", basic("alice", f"guess-{i}"), timeout=120)
        with lock:
            statuses.append(status)
            if status == 429:
                retry_after.append(headers.get("Retry-After", ""))

    try:
        threads = [threading.Thread(target=bad, args=(i,)) for i in range(200)]
        for t in threads:
            t.start()
        # A correct login during the flood: answered 429 (retry) or 200, never queued behind 200 bcrypt runs.
        ok_at = None
        started = time.monotonic()
        while time.monotonic() - started < 60:
            status, headers, _ = get(sw.base + "/-/ready", basic("alice", PASSWORD), timeout=60)
            if status == 200:
                ok_at = time.monotonic() - started
                break
            assert status == 429 and headers.get("Retry-After") == "1", status
            time.sleep(0.2)
        for t in threads:
            t.join(120)
        assert ok_at is not None, "the correct login never got through"
        assert len(statuses) == 200 and set(statuses) <= {401, 429}
        assert statuses.count(429) > 0 and set(retry_after) == {"1"}
        text = get(sw.base + "/metrics", basic("alice", PASSWORD))[2].decode()
        counters = {name: metric(text, name) for name in ("stackwatch_http_auth_busy_total",
                                                           "stackwatch_http_auth_failures_total")}
        assert counters["stackwatch_http_auth_busy_total"] >= statuses.count(429)
        assert counters["stackwatch_http_auth_failures_total"] >= statuses.count(401)
        assert runs(text, "healthy", "failure") == 0 and runs(text, "healthy", "success") >= 1
    finally:
        sw.stop()


def test_supervisor_reloads_its_web_config_and_survives_sighup_at_start(servers, tmp_path):
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {FAST}\n")
    cfg = healthy_config(tmp_path, servers)
    port = free_block(3)
    base = f"http://127.0.0.1:{port}"
    proc = Process([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--workers", "2",
                    "--web.config.file", str(web), "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "info"],
                   tmp_path / "supervisor.log")
    try:
        # SIGHUP every 50 ms through start-up (config check, workers starting), from the moment
        # the interpreter runs stackwatch's first line (before that, no Python program can
        # have a say about signals): the process marks SIGHUP ignored or caught there.
        def hup_handled() -> bool:
            status = open(f"/proc/{proc.proc.pid}/status").read()
            masks = {k: int(v, 16) for k, v in (line.split(":\t") for line in status.splitlines()
                                                   if line.startswith(("SigIgn", "SigCgt")))}
            return bool((masks["SigIgn"] | masks["SigCgt"]) & (1 << (signal.SIGHUP - 1)))

        wait_until(hup_handled, 10, "stackwatch running")
        for _ in range(60):
            time.sleep(0.05)
            if proc.proc.poll() is not None:
                break
            proc.signal(signal.SIGHUP)
        assert proc.proc.poll() is None, f"the supervisor died: {proc.proc.returncode}\n{proc.log()}"
        alice, bob = basic("alice", PASSWORD), basic("bob", PASSWORD)
        wait_until(lambda: get(base + "/-/ready", alice)[0] == 200, 30, "every worker ready")
        assert get(base + "/sd")[0] == 401
        web.write_text(f"basic_auth_users:\n  bob: {FAST}\n")
        proc.signal(signal.SIGHUP)
        wait_until(lambda: get(base + "/sd", bob)[0] == 200, 10, "bob at the supervisor")
        assert get(base + "/sd", alice)[0] == 401
        for worker in (f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port + 2}"):
            wait_until(lambda w=worker: get(w + "/metrics", bob)[0] == 200, 10, "bob at a worker")
            assert get(worker + "/metrics", alice)[0] == 401
        targets = json.loads(get(base + "/sd", bob)[2])
        assert len(targets) == 2
        assert "Traceback" not in proc.log()
    finally:
        proc.stop()
