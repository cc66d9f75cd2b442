"""Real processes for end-to-end tests: stackwatch itself and Debian's Prometheus.

Both bind loopback ports chosen at run time and write into a pytest tmp dir.  A missing
binary is a test failure, never a skip: CI installs them (.ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from targets import free_port


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed; run .ci/run or apt-get install the Debian package")
    return path


def http_get(url: str, timeout: float = 5, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_post(url: str, data: bytes = b"", timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


PORT_ATTEMPTS = 3
"""A child that finds its chosen port taken (chosen free, bound a moment later) is started again
on another port: no test fails because of a port race."""


def lost_port(log: str) -> bool:
    return "address already in use" in log.lower()


class Process:
    live: set[Process] = set()
    """Every process started and not yet stopped: conftest stops those a test started and left
    running (its setup failed half-way, say), and at the end of the session all of them."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn)
        Process.live.add(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _start_on_a_port(self, what: str, launch: Callable[[int], None], ready: Callable[[], bool],
                         timeout: float, port: int | None = None) -> None:
        """Set ``port``/``base``, ``launch(port)`` (which runs Process.__init__) and wait until
        ``ready()``.  Without a fixed ``port`` a free one is chosen, and a child that finds it taken
        by another process before it binds is started again on another (PORT_ATTEMPTS in all)."""
        for attempt in range(1 if port else PORT_ATTEMPTS):
            self.port = port or free_port()
            self.base = f"http://127.0.0.1:{self.port}"
            launch(self.port)

            def is_ready() -> bool:
                if self.proc.poll() is not None:
                    raise AssertionError("exited")
                return ready()

            try:
                wait_until(is_ready, timeout, f"{what} ready")
                return
            except AssertionError:
                self.stop()
                if not port and lost_port(self.log()) and attempt + 1 < PORT_ATTEMPTS:
                    continue  # another process took the port between choice and bind: choose again
                raise AssertionError(f"{what} did not start:\n{self.log()}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        Process.live.discard(self)


class Stackwatch(Process):
    """stackwatch started exactly as a user starts it: ``python -m stackwatch --config.file ...``."""

    def __init__(self, config_path: Path, tmp: Path, env: dict[str, str] | None = None, extra: list[str] | None = None,
                 ready_url: str = "/-/ready", scheme: str = "http", ca: Path | None = None, client_cert: bool = False,
                 preexec_fn: Callable[[], None] | None = None):
        full_env = {**os.environ, **(env or {})}
        context = None
        if scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=str(ca))
            if client_cert:
                context.load_cert_chain(str(ca.parent / "client.pem"), str(ca.parent / "client-key.pem"))

        def launch(port: int) -> None:
            args = list(extra or [])
            if not any(a.startswith("--storage.") for a in args):
                # each exporter its own state store, unless the test shares one on purpose
                args += ["--storage.path", str(tmp / f"state-{port}.db")]
            Process.__init__(self, [sys.executable, "-m", "stackwatch", "--config.file", str(config_path),
                                    "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug", *args],
                             tmp / f"stackwatch-{port}.log", full_env, preexec_fn)

        def ready() -> bool:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}{ready_url}", timeout=5,
                                        context=context) as resp:
                return resp.status == 200

        self._start_on_a_port("stackwatch", launch, ready, 20)

    def metrics(self) -> str:
        return http_get(self.base + "/metrics")[2].decode()


class Prometheus(Process):
    """Debian's prometheus with a temp config and data dir; query helpers over its HTTP API."""

    def __init__(self, tmp: Path, scrape_configs: list[dict[str, Any]], rule_files: list[str] | None = None,
                 alertmanagers: list[str] | None = None, evaluation_interval: str = "1s",
                 scrape_interval: str = "1s", extra_args: list[str] | None = None, data_dir: Path | None = None):
        binary = require_binary("prometheus")

        def launch(port: int) -> None:
            self.dir = tmp / f"prometheus-{port}"
            self.dir.mkdir()
            data = data_dir or self.dir / "data"  # data_dir: a TSDB filled beforehand (promtool backfill)
            config: dict[str, Any] = {
                "global": {"scrape_interval": scrape_interval, "scrape_timeout": "900ms",
                           "evaluation_interval": evaluation_interval},
                "scrape_configs": scrape_configs,
            }
            if rule_files:
                config["rule_files"] = rule_files
            if alertmanagers:
                config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
            (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
            Process.__init__(self, [binary, f"--config.file={self.dir / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--web.enable-lifecycle", "--log.level=warn", *(extra_args or [])],
                             self.dir / "prometheus.log")

        self._start_on_a_port("prometheus", launch, lambda: http_get(self.base + "/-/ready")[0] == 200, 30)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, _, body = http_get(url, timeout=10)
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: HTTP {status}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, check: Callable[[list[dict[str, Any]]], bool] = bool, timeout: float = 30) -> list[dict[str, Any]]:
        return wait_until(lambda: (lambda r: r if check(r) else None)(self.query(expr)), timeout, f"PromQL {expr}")

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def backfilled_tsdb(tmp: Path, lines: list[str]) -> Path:
    """A Prometheus data directory holding the OpenMetrics ``lines`` (samples with timestamps),
    written by promtool: history for a Prometheus started with ``data_dir``, without waiting."""
    source = tmp / "backfill.om"
    source.write_text("\n".join(lines) + "\n# EOF\n")
    data = tmp / "backfill-tsdb"
    made = subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source),
                           str(data)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    return data


def stackwatch_scrape(sw: Stackwatch, job: str = "stackwatch") -> dict[str, Any]:
    return {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{sw.port}"]}]}
