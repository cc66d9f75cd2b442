"""Scale-out on Prometheus's own distributed path, live: two stackwatch shards, each scraped by a
Prometheus in agent mode that remote-writes to a central Prometheus (remote-write receiver on),
which evaluates the shipped rules.  Every target appears exactly once centrally, a failing
target's alert fires centrally, and killing one shard's agent makes exactly that shard's targets
stale and alerted on, with the shard itself reported missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from harness import (
    Process,
    Prometheus,
    Stackwatch,
    http_get,
    require_binary,
    wait_until,
)
from stackwatch import bundle
from stackwatch.config import shard_of
from targets import free_port

ROOT = Path(__file__).resolve().parents[1]


def agent_flags() -> list[str]:
    out = subprocess.run([require_binary("prometheus"), "--version"], capture_output=True, text=True).stdout
    major = int(out.split("version ", 1)[1].split(".", 1)[0])
    return ["--agent"] if major >= 3 else ["--enable-feature=agent"]


class Agent(Process):
    def __init__(self, tmp: Path, sw: Stackwatch, central: str, name: str):
        self.port = free_port()
        d = tmp / f"agent-{name}"
        d.mkdir()
        cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
               "scrape_configs": [{"job_name": "stackwatch", "static_configs": [{"targets": [f"127.0.0.1:{sw.port}"]}]}],
               "remote_write": [{"url": f"{central}/api/v1/write",
                                 "queue_config": {"batch_send_deadline": "1s", "max_backoff": "1s"}}]}
        (d / "agent.yml").write_text(yaml.safe_dump(cfg))
        super().__init__([require_binary("prometheus"), *agent_flags(), f"--config.file={d / 'agent.yml'}",
                          f"--storage.agent.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                          "--log.level=warn"], d / "agent.log")
        wait_until(lambda: http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200, 30, f"agent {name}")


def test_two_shards_through_agents_into_one_central_prometheus(servers, tmp_path):
    names = [f"svc-{i}" for i in range(12)] + ["broken"]
    cfg = tmp_path / "shared.yml"
    cfg.write_text("defaults: {interval: 1s, timeout: 800ms}\ntargets:\n" + "".join(
        f'  - {{name: {n}, kind: http, url: "{servers.url("/health")}"}}\n' for n in names[:-1])
        + f'  - {{name: broken, kind: http, url: "http://127.0.0.1:{servers.closed_port}/"}}\n')
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    alerts = bundle.scaled_alert_rules(rules_dir / "alerts.yml", divisor=10)
    # The shard-missing threshold is a duration in the expression: scale it like the `for`s.
    alerts.write_text(alerts.read_text().replace("time() - timestamp(stackwatch_shard_info) > 60",
                                                 "time() - timestamp(stackwatch_shard_info) > 6"))
    procs: list[Process] = []
    try:
        central = Prometheus(tmp_path, [], rule_files=[str(ROOT / "prometheus" / "rules" / "stackwatch-recording.yml"),
                                                       str(alerts)],
                             extra_args=["--web.enable-remote-write-receiver"])
        procs.append(central)
        base = central.base

        shards = [Stackwatch(cfg, tmp_path, extra=["--shard.index", str(i), "--shard.count", "2"]) for i in (0, 1)]
        procs.extend(shards)
        agents = [Agent(tmp_path, sw, base, str(i)) for i, sw in enumerate(shards)]
        procs.extend(agents)

        query = central.query

        # Every target exactly once, centrally, each from the shard its name hashes to.
        def all_present() -> list[dict] | None:
            r = query("stackwatch_probe_success")
            return r if len(r) == len(names) else None

        series = wait_until(all_present, 60, "every target centrally")
        assert sorted(s["metric"]["target"] for s in series) == sorted(names)
        by_shard = {s["metric"]["target"]: s["metric"]["instance"] for s in series}
        for n in names:
            assert by_shard[n] == f"127.0.0.1:{shards[shard_of(n, 2)].port}", n
        # The failing target's alert fires centrally.
        wait_until(lambda: [a for a in query('ALERTS{alertname="StackwatchTargetDown",alertstate="firing"}')
                            if a["metric"]["target"] == "broken"], 60, "TargetDown centrally")

        # Kill one shard's agent: exactly its targets go stale, and the shard is missing.
        dead = shard_of("svc-0", 2)
        agents[dead].proc.kill()
        agents[dead].proc.wait(10)
        dead_targets = {n for n in names if shard_of(n, 2) == dead}

        def stale() -> set[str] | None:
            fired = {a["metric"]["target"] for a in query('ALERTS{alertname="StackwatchProbeStale",alertstate="firing"}')}
            return fired if fired >= dead_targets else None

        fired = wait_until(stale, 90, "the dead shard's targets stale")
        assert fired == dead_targets
        missing = wait_until(lambda: query('ALERTS{alertname="StackwatchShardMissing",alertstate="firing"}'), 60,
                             "the shard missing")
        assert [m["metric"]["index"] for m in missing] == [str(dead)]
    except AssertionError:
        for p in procs:
            print(f"--- {p.log_path.name}\n{p.log()[-1500:]}")
        raise
    finally:
        for p in reversed(procs):
            p.stop()
