"""Kubernetes manifests for stackwatch, generated from the bundle (never hand-copied):

* ``stackwatch.yaml``: a ConfigMap with the config, a headless Service and a StatefulSet whose
  replicas shard the targets (``--shard.index hostname``: the pod ordinal);
* ``servicemonitor.yaml``: the prometheus-operator ServiceMonitor scraping every replica;
* ``prometheusrule.yaml``: the PrometheusRule holding ``prometheus/rules/*.yml`` as they are;
* ``dashboards.yaml``: one ConfigMap per dashboard, labelled for Grafana's dashboard sidecar;
* ``alertmanager-secret.yaml``: a Secret template with the Alertmanager config and template,
  the bot token to be filled in (``REPLACE_WITH_BOT_TOKEN``).

``stackwatch kubernetes-manifests DIR [--replicas N] [--namespace NS] [--image IMAGE]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from stackwatch import __version__
from stackwatch.bundle import alertmanager_config, bundle_dir

NAME = "stackwatch"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": NAME}
PORT = 9938


def _meta(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**LABELS, **extra.pop("labels", {})}, **extra}


def workload(namespace: str, replicas: int, image: str, config_text: str) -> list[dict[str, Any]]:
    probe = {"httpGet": {"path": "/-/healthy", "port": "web"}, "periodSeconds": 10, "timeoutSeconds": 3}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{NAME}-config", namespace),
         "data": {"stackwatch.yml": config_text}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(NAME, namespace),
         "spec": {"clusterIP": "None", "selector": LABELS,
                  "ports": [{"name": "web", "port": PORT, "targetPort": "web", "protocol": "TCP"}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(NAME, namespace),
         "spec": {
             "serviceName": NAME, "replicas": replicas, "podManagementPolicy": "Parallel",
             "selector": {"matchLabels": LABELS},
             "template": {
                 "metadata": {"labels": LABELS},
                 "spec": {
                     "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": NAME, "image": image,
                         "args": ["--config.file=/etc/stackwatch/stackwatch.yml", f"--web.listen-address=:{PORT}",
                                  "--shard.index=hostname", f"--shard.count={replicas}", "--log.format=json",
                                  # each replica's own state (consistency last-change times) on its
                                  # volume; heartbeats pushed to any replica need one shared store:
                                  # set STACKWATCH_STORAGE_URL to a PostgreSQL database instead
                                  "--storage.path=/var/lib/stackwatch/stackwatch.db"],
                         "ports": [{"name": "web", "containerPort": PORT, "protocol": "TCP"}],
                         "readinessProbe": {**probe, "httpGet": {"path": "/-/ready", "port": "web"}},
                         "livenessProbe": probe,
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                       "limits": {"memory": "512Mi"}},
                         "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}},
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/stackwatch", "readOnly": True},
                                          {"name": "tmp", "mountPath": "/tmp"},
                                          {"name": "state", "mountPath": "/var/lib/stackwatch"}],
                     }],
                     "volumes": [{"name": "config", "configMap": {"name": f"{NAME}-config"}},
                                 {"name": "tmp", "emptyDir": {}}],
                 },
             },
             "volumeClaimTemplates": [{
                 "metadata": {"name": "state", "labels": dict(LABELS)},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
             }],
         }},
    ]


def service_monitor(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(NAME, namespace),
            "spec": {"selector": {"matchLabels": LABELS}, "namespaceSelector": {"matchNames": [namespace]},
                     "endpoints": [{"port": "web", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]}}


def prometheus_rule(namespace: str) -> dict[str, Any]:
    groups: list[dict[str, Any]] = []
    for name in ("stackwatch-recording.yml", "stackwatch-alerts.yml"):
        groups.extend(yaml.safe_load((bundle_dir("prometheus") / "rules" / name).read_text())["groups"])
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": _meta(NAME, namespace),
            "spec": {"groups": groups}}


def dashboards(namespace: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted((bundle_dir("grafana") / "dashboards").glob("*.json")):
        json.loads(path.read_text())  # a broken dashboard fails the generation
        out.append({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": _meta(f"{path.stem}-dashboard", namespace, labels={"grafana_dashboard": "1"}),
                    "data": {path.name: path.read_text()}})
    return out


def alertmanager_secret(namespace: str) -> dict[str, Any]:
    doc = alertmanager_config(bot_token="REPLACE_WITH_BOT_TOKEN", email=False)
    doc["templates"] = ["/etc/alertmanager/config/*.tmpl"]  # where the operator mounts the Secret's keys
    files = {"alertmanager.yaml": yaml.safe_dump(doc, sort_keys=False)}
    for tmpl in sorted((bundle_dir("alertmanager") / "templates").glob("*.tmpl")):
        files[tmpl.name] = tmpl.read_text()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta("alertmanager-stackwatch", namespace), "stringData": files}


def manifests(namespace: str = "monitoring", replicas: int = 2, image: str | None = None) -> dict[str, list[dict[str, Any]]]:
    config_text = (bundle_dir("examples") / "stackwatch.yml").read_text()
    return {
        "stackwatch.yaml": workload(namespace, replicas, image or f"stackwatch:{__version__}", config_text),
        "servicemonitor.yaml": [service_monitor(namespace)],
        "prometheusrule.yaml": [prometheus_rule(namespace)],
        "dashboards.yaml": dashboards(namespace),
        "alertmanager-secret.yaml": [alertmanager_secret(namespace)],
    }


def write(dest: Path, **kw: Any) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    header = "# Generated by `stackwatch kubernetes-manifests`; edit the bundle, not this file.\n"
    for name, docs in manifests(**kw).items():
        path = dest / name
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False, width=120))
        written.append(path)
    return written
