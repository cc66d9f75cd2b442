"""``stackwatch --workers N``: one process per shard on one machine, found by Prometheus through
``/sd`` (http_sd_configs), restarted when one dies, reloaded together on SIGHUP."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import Prometheus, Process, http_get, require_binary, wait_until
from expo import value as metric


def free_block(n: int) -> int:
    """A port p with p .. p+n-1 all free (the supervisor's and its workers'), below the kernel's
    ephemeral range: a worker started again binds its port again, and a port in that range may
    meanwhile have been taken as the local end of some outgoing connection (seen in CI)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20000, low - n)
        socks = []
        try:
            for i in range(n):
                k = socket.socket()
                socks.append(k)
                k.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for k in socks:
                k.close()
    raise AssertionError("no block of free ports")


class Supervised(Process):
    def __init__(self, cfg: Path, tmp: Path, workers: int = 2, extra: list[str] | None = None,
                 preexec_fn=None, ready=None):
        self.port = free_block(workers + 1)
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = [f"http://127.0.0.1:{self.port + 1 + i}" for i in range(workers)]
        super().__init__([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--workers", str(workers),
                          "--web.listen-address", f"127.0.0.1:{self.port}", "--log.level", "info", *(extra or [])],
                         tmp / f"supervisor-{self.port}.log", dict(os.environ), preexec_fn=preexec_fn)
        try:
            check = ready or (lambda sup: http_get(sup.base + "/-/ready")[0] == 200)
            wait_until(lambda: check(self), 30, "every worker ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"the supervisor did not get ready:\n{self.log()}") from None

    def worker_pid(self, index: int) -> int:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"127.0.0.1:{self.port + 1 + index}".encode() in cmd and b"--shard.index" in cmd:
                return int(d.name)
        raise AssertionError(f"no worker process for shard {index}")


def targets_in(text: str) -> set[str]:
    return set(re.findall(r'stackwatch_probe_success\{target="([^"]+)"', text))


def probes(text: str) -> float:
    return sum(float(v) for v in re.findall(r'^stackwatch_probes_total\{[^}]*result="success"\} (\S+)$', text, re.M))


def write_config(path: Path, servers, n: int) -> list[str]:
    names = [f"svc-{i}" for i in range(n)]
    path.write_text("defaults: {interval: 500ms}\ntargets:\n" + "".join(
        f'  - {{name: {x}, kind: http, url: "{servers.url("/health")}"}}\n' for x in names))
    return names


def test_workers_split_the_targets_and_prometheus_finds_every_shard_through_sd(servers, tmp_path):
    cfg = tmp_path / "stackwatch.yml"
    names = write_config(cfg, servers, 24)
    sup = Supervised(cfg, tmp_path)
    try:
        groups = json.loads(http_get(sup.base + "/sd")[2])
        assert groups == [{"targets": [w.removeprefix("http://")], "labels": {"shard": str(i)}}
                          for i, w in enumerate(sup.workers)]

        def split() -> list[set[str]] | None:
            sets = [targets_in(http_get(w + "/metrics")[2].decode()) for w in sup.workers]
            return sets if sum(map(len, sets)) == len(names) else None

        a, b = wait_until(split, 20, "every target probed by one worker")
        assert a and b and not a & b and a | b == set(names)
        assert metric(http_get(sup.workers[1] + "/metrics")[2], "stackwatch_shard_info", count="2", index="1") == 1

        prom = Prometheus(tmp_path, [
            {"job_name": "stackwatch", "http_sd_configs": [{"url": sup.base + "/sd", "refresh_interval": "1s"}]},
            {"job_name": "supervisor", "static_configs": [{"targets": [f"127.0.0.1:{sup.port}"]}]},
        ])
        try:
            prom.wait_for('count(stackwatch_probe_success{job="stackwatch"} == 1)',
                          lambda r: bool(r) and r[0]["value"][1] == str(len(names)))
            by_instance = prom.query('count by (instance, shard) (stackwatch_probe_success{job="stackwatch"})')
            assert sorted(r["metric"]["shard"] for r in by_instance) == ["0", "1"]
            assert sum(int(r["value"][1]) for r in by_instance) == len(names)
            prom.wait_for('sum(stackwatch_worker_up{job="supervisor"})', lambda r: bool(r) and r[0]["value"][1] == "2")
            own = http_get(sup.base + "/metrics")[2]
            lint = subprocess.run([require_binary("promtool"), "check", "metrics"], input=own, capture_output=True)
            assert lint.returncode == 0, lint.stdout + lint.stderr
        finally:
            prom.stop()
    finally:
        sup.stop()


def test_a_killed_worker_is_started_again_and_the_other_shard_keeps_probing(servers, tmp_path):
    cfg = tmp_path / "stackwatch.yml"
    write_config(cfg, servers, 12)
    sup = Supervised(cfg, tmp_path)
    try:
        pid = sup.worker_pid(0)
        os.kill(pid, signal.SIGKILL)
        before = probes(http_get(sup.workers[1] + "/metrics")[2].decode())
        time.sleep(1.5)
        # shard 1 went on probing while shard 0 was down
        assert probes(http_get(sup.workers[1] + "/metrics")[2].decode()) > before
        wait_until(lambda: metric(http_get(sup.base + "/metrics")[2], "stackwatch_worker_restarts_total", shard="0") == 1,
                   15, "the supervisor counted the restart")
        wait_until(lambda: http_get(sup.workers[0] + "/-/healthy")[0] == 200, 20, "shard 0 back")
        assert sup.worker_pid(0) != pid
        assert metric(http_get(sup.base + "/metrics")[2], "stackwatch_worker_restarts_total", shard="1") == 0
        assert "worker exited; starting it again" in sup.log()
    finally:
        sup.stop()
    # SIGTERM to the supervisor stopped every worker
    wait_until(lambda: not any(f":{sup.port + 1 + i}".encode() in (Path(f"/proc/{d}/cmdline").read_bytes()
                                                                  if Path(f"/proc/{d}/cmdline").exists() else b"")
                               for d in os.listdir("/proc") if d.isdigit() for i in range(2)),
               15, "no worker left")


def test_sighup_reloads_every_worker(servers, tmp_path):
    cfg = tmp_path / "stackwatch.yml"
    names = write_config(cfg, servers, 6)
    sup = Supervised(cfg, tmp_path)
    try:
        wait_until(lambda: sum(len(targets_in(http_get(w + "/metrics")[2].decode())) for w in sup.workers) == 6,
                   15, "six targets")
        write_config(cfg, servers, 9)
        sup.signal(signal.SIGHUP)

        def nine() -> list[set[str]] | None:
            sets = [targets_in(http_get(w + "/metrics")[2].decode()) for w in sup.workers]
            return sets if sum(map(len, sets)) == 9 else None

        a, b = wait_until(nine, 20, "the new targets, each in one shard")
        assert a | b == {f"svc-{i}" for i in range(9)} and not a & b
        assert set(names) < a | b
    finally:
        sup.stop()


def test_a_bad_config_is_reported_once_and_starts_no_worker(tmp_path):
    cfg = tmp_path / "bad.yml"
    cfg.write_text("targets:\n  - {name: x, kind: http, url: 'ftp://nope'}\n")
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--workers", "2",
                           "--web.listen-address", f"127.0.0.1:{free_block(3)}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "targets[0].url (line 2" in proc.stderr and "expected an http:// or https:// URL" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "stackwatch", "--config.file", str(cfg), "--workers", "2",
                           "--shard.count", "2"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--workers and --shard.* exclude each other" in proc.stderr


def test_connection_flood_under_a_low_fd_limit_then_a_killed_worker_is_restarted(servers, tmp_path):
    """The supervisor serves through the exporter's listener: idle connections are closed after
    the head timeout, those past the cap at accept; a worker killed during the flood is started
    again (its pipe and fork need file descriptors the flood does not get)."""
    import resource

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    cfg = tmp_path / "stackwatch.yml"
    write_config(cfg, servers, 4)
    sup = Supervised(cfg, tmp_path, extra=["--web.read-header-timeout", "1"], preexec_fn=low_fd_limit)
    held: list[socket.socket] = []
    try:
        pid = sup.worker_pid(0)
        for _ in range(400):  # idle connections: never a byte sent
            k = socket.socket()
            k.setblocking(False)
            k.connect_ex(("127.0.0.1", sup.port))
            held.append(k)
        os.kill(pid, signal.SIGKILL)
        time.sleep(3)  # the flood is held past the head timeout while the worker is down
        for k in held:
            k.close()
        held.clear()
        wait_until(lambda: http_get(sup.base + "/-/ready")[0] == 200, 30, "the killed worker back and ready")
        assert sup.worker_pid(0) != pid
        text = http_get(sup.base + "/metrics")[2].decode()
        assert metric(text, "stackwatch_worker_restarts_total", shard="0") == 1
        refused = float(re.search(r"^stackwatch_http_connections_refused_total (\S+)$", text, re.M).group(1))
        timeouts = float(re.search(r"^stackwatch_http_header_timeouts_total (\S+)$", text, re.M).group(1))
        assert refused + timeouts >= 300, text  # the cap is a quarter of 256 fds: most were turned away
        assert "Traceback" not in sup.log()
        assert sup.log().count("out of system resource") <= 5
    finally:
        for k in held:
            k.close()
        sup.stop()


def test_readiness_under_required_client_certificates(servers, tmp_path):
    """The supervisor learns that its workers are ready from a pipe, not over HTTP: with client
    certificates required it still answers /-/ready (to a client that has one)."""
    import ssl
    import urllib.request

    tls = servers.tls
    web = tmp_path / "web.yml"
    web.write_text(f"""tls_server_config:
  cert_file: {tls['cert']}
  key_file: {tls['key']}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {tls['ca']}
""")
    ctx = ssl.create_default_context(cafile=str(tls["ca"]))
    ctx.load_cert_chain(str(tls["client_cert"]), str(tls["client_key"]))

    def ready(sup: Supervised) -> bool:
        with urllib.request.urlopen(f"https://127.0.0.1:{sup.port}/-/ready", timeout=5, context=ctx) as resp:
            return resp.status == 200

    cfg = tmp_path / "stackwatch.yml"
    write_config(cfg, servers, 4)
    sup = Supervised(cfg, tmp_path, extra=["--web.config.file", str(web)], ready=ready)
    try:
        for _ in range(5):
            assert ready(sup)
        with urllib.request.urlopen(f"https://127.0.0.1:{sup.port}/sd", timeout=5, context=ctx) as resp:
            assert len(json.loads(resp.read())) == 2
        assert "Traceback" not in sup.log()
    finally:
        sup.stop()
