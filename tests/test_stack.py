"""The deployable stack: docker-compose.yml validated by Debian's docker-compose (no Docker engine
runs here), the Dockerfile's essentials, and the same stack without Docker: `stackwatch demo
--with-prometheus` with Debian's prometheus and prometheus-alertmanager, alerts delivered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from harness import Process, http_get, require_binary, wait_until
from targets import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_docker_compose_config_is_valid():
    compose = require_binary("docker-compose")
    proc = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "compose-test-password"},
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    services = {k: v for k, v in doc["services"].items() if not v.get("profiles")}
    assert set(services) == {"stackwatch", "prometheus", "alertmanager", "grafana"}
    for name in ("prometheus", "alertmanager", "grafana"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image must be pinned: {image}"
    am_version = tuple(int(x) for x in services["alertmanager"]["image"].split(":v")[1].split("."))
    assert am_version >= (0, 26, 0), "bot_token_file needs Alertmanager >= 0.26"
    assert services["stackwatch"]["build"]
    # Without the admin password the stack refuses to start instead of using a default one.
    proc = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"},
                          cwd=ROOT)
    assert proc.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in proc.stderr


def test_the_distributed_profile_is_the_tested_topology(tmp_path):
    """Profile "distributed": two stackwatch shards, a Prometheus agent per shard remote-writing to
    a central Prometheus that evaluates the shipped rules -- what tests/test_distributed.py runs."""
    compose = require_binary("docker-compose")
    proc = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "--profile", "distributed", "config"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GRAFANA_ADMIN_PASSWORD": "compose-test-password"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    services = {k: v for k, v in yaml.safe_load(proc.stdout)["services"].items() if v.get("profiles")}
    assert set(services) == {"stackwatch-0", "stackwatch-1", "agent-0", "agent-1", "central"}
    for i in (0, 1):
        cmd = services[f"stackwatch-{i}"]["command"]
        assert cmd[cmd.index("--shard.index") + 1] == str(i) and cmd[cmd.index("--shard.count") + 1] == "2"
        assert "--agent" in services[f"agent-{i}"]["command"]
    assert "--web.enable-remote-write-receiver" in services["central"]["command"]
    for name in ("agent-0", "agent-1", "central"):
        version = tuple(int(x) for x in services[name]["image"].split(":v")[1].split("."))
        assert version >= (3, 0, 0), f"{name}: Prometheus 3 (--agent)"
    promtool = require_binary("promtool")
    for i in (0, 1):
        agent = ROOT / "deploy" / "distributed" / f"agent-{i}.yml"
        cfg = yaml.safe_load(agent.read_text())
        assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == [f"stackwatch-{i}:9938"]
        assert cfg["remote_write"][0]["url"] == "http://central:9090/api/v1/write"
        check = subprocess.run([promtool, "check", "config", "--agent", str(agent)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # The central config with the rule path pointing at this checkout's rules, as mounted.
    central = (ROOT / "deploy" / "distributed" / "central.yml").read_text()
    local = tmp_path / "central.yml"
    local.write_text(central.replace("/etc/prometheus/rules/*.yml", str(ROOT / "prometheus" / "rules" / "*.yml")))
    check = subprocess.run([promtool, "check", "config", str(local)], capture_output=True, text=True)
    assert check.returncode == 0 and "2 rule files found" in check.stdout, check.stdout + check.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "\nUSER stackwatch\n" in text
    assert "HEALTHCHECK" in text and "/-/healthy" in text


def test_stack_without_docker_demo_with_prometheus_delivers_alerts(tmp_path):
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    port, prom_port, am_port = free_port(), free_port(), free_port()
    demo = Process([sys.executable, "-m", "stackwatch", "demo", "--with-prometheus", "--web.listen-address",
                    f"127.0.0.1:{port}", "--dir", str(tmp_path), "--prometheus-port", str(prom_port),
                    "--alertmanager-port", str(am_port)], tmp_path / "demo.log")
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready")[0] == 200, 30, "demo's Prometheus")
        wait_until(lambda: http_get(f"http://127.0.0.1:{am_port}/-/ready")[0] == 200, 30, "demo's Alertmanager")
        # The ESG backend refuses connections: StackwatchTargetDown fires and reaches the sinks.
        wait_until(lambda: "[webhook sink] firing: StackwatchTargetDown esg-backend" in demo.log(), 90,
                   "the ESG backend's TargetDown at the demo's webhook sink")
        assert "[telegram sink] 🔥 <b>FIRING:" in demo.log()
    except AssertionError:
        print(demo.log()[-4000:])
        print((tmp_path / "prometheus-alertmanager.log").read_text()[-3000:])
        raise
    finally:
        demo.stop()
