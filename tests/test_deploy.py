"""Deployment files: the systemd unit passes systemd-analyze and keeps its hardening."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "stackwatch.service"


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    script = Path(sys.executable).parent / "stackwatch"
    unit = tmp_path / "stackwatch.service"
    text = UNIT.read_text()
    # The unit names the usual install path; verify it against the script this checkout installed.
    unit.write_text(text.replace("/usr/local/bin/stackwatch", str(script)))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    for setting in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "PrivateTmp=yes", "CapabilityBoundingSet=\n", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert setting in text, setting
    security = subprocess.run([analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                              timeout=60)
    level = re.search(r"Overall exposure level for stackwatch.service: ([0-9.]+)", security.stdout)
    assert level and float(level.group(1)) <= 2.0, security.stdout[-500:]
    # The listen address in the unit is loopback: the port is not exposed unless the operator chooses to.
    assert "--web.listen-address=127.0.0.1:" in text


def test_kubernetes_manifests_are_generated_and_valid(tmp_path, monkeypatch):
    import kubernetes_validate
    import yaml
    from harness import require_binary
    from stackwatch import cli
    from stackwatch.kubernetes import write

    fresh = tmp_path / "k8s"
    write(fresh)
    committed = ROOT / "deploy" / "kubernetes"
    for path in sorted(fresh.iterdir()):
        assert (committed / path.name).read_text() == path.read_text(), \
            f"deploy/kubernetes/{path.name} is stale: run stackwatch kubernetes-manifests deploy/kubernetes"
    assert {p.name for p in committed.iterdir()} == {p.name for p in fresh.iterdir()}
    docs = [d for p in sorted(committed.iterdir()) for d in yaml.safe_load_all(p.read_text())]
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "PrometheusRule", "Secret", "Service", "ServiceMonitor", "StatefulSet"]
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(doc, "1.30", strict=True)  # raises on any schema error
    broken = {**sts, "spec": {**sts["spec"], "replica": 2}}  # the check does catch a misspelt field
    try:
        kubernetes_validate.validate(broken, "1.30", strict=True)
        raise AssertionError("a misspelt field passed the schema check")
    except kubernetes_validate.ValidationError:
        pass
    # prometheus-operator objects: against the operator's CRD schemas, the fields it reads, the rules.
    operator = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert crd_check(operator).returncode == 0
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    svc = next(d for d in docs if d["kind"] == "Service")
    assert sm["spec"]["selector"]["matchLabels"] == svc["metadata"]["labels"]
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--shard.index=hostname" in args and f"--shard.count={sts['spec']['replicas']}" in args
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run([require_binary("promtool"), "check", "rules", str(rules_file)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    originals = [g["name"] for f in ("stackwatch-recording.yml", "stackwatch-alerts.yml")
                 for g in yaml.safe_load((ROOT / "prometheus" / "rules" / f).read_text())["groups"]]
    assert [g["name"] for g in rule["spec"]["groups"]] == originals
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard")]
    assert len(dashboards) == len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    # The Alertmanager Secret's config passes amtool once its template sits where it points.
    secret = next(d for d in docs if d["kind"] == "Secret")
    am_dir = tmp_path / "am"
    am_dir.mkdir()
    for key, value in secret["stringData"].items():
        (am_dir / key).write_text(value)
    cfg = yaml.safe_load((am_dir / "alertmanager.yaml").read_text())
    cfg["templates"] = [str(am_dir / "*.tmpl")]
    (am_dir / "alertmanager.yaml").write_text(yaml.safe_dump(cfg))
    check = subprocess.run([require_binary("amtool"), "check-config", str(am_dir / "alertmanager.yaml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # A StatefulSet pod's host name gives its shard.
    monkeypatch.setattr(cli.socket, "gethostname", lambda: "stackwatch-1")
    assert cli._shard("hostname", 2) == (1, 2)


CRD_CHECK = ROOT / "tests" / "crd"


def crd_check(docs: list[dict]) -> subprocess.CompletedProcess[str]:
    """tests/crd/validate.mjs: prometheus-operator's CRD schemas (npm @kubernetes-models/
    prometheus-operator, pinned in tests/crd/package-lock.json, installed by tests/run.sh)."""
    import json

    from harness import require_binary

    if not (CRD_CHECK / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        raise AssertionError("tests/crd/node_modules is missing: run tests/run.sh (npm ci --prefix tests/crd)")
    proc = subprocess.run([require_binary("node"), str(CRD_CHECK / "validate.mjs")], input=json.dumps(docs),
                          capture_output=True, text=True, timeout=60, cwd=CRD_CHECK)
    assert proc.stdout.count("\n") == len(docs), proc.stdout + proc.stderr
    return proc


def test_the_crd_check_rejects_what_the_operator_would():
    import yaml

    sm = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "servicemonitor.yaml").read_text())
    rule = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml").read_text())
    bad_sm = {**sm, "spec": {**sm["spec"], "endpoints": [{**sm["spec"]["endpoints"][0], "scheme": "gopher"}]}}
    bad_rule = {**rule, "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": 1, "for": 5}]}]}}
    proc = crd_check([bad_sm, bad_rule])
    assert proc.returncode == 1
    assert "INVALID ServiceMonitor stackwatch: data/spec/endpoints/0/scheme must be equal to one of the allowed values" \
        in proc.stdout
    assert "INVALID PrometheusRule stackwatch" in proc.stdout
