"""The running exporter: config + store + scheduler, reloads, and stackwatch's own metrics."""

from __future__ import annotations

import gc
import logging
import os
import platform
import time
from pathlib import Path

from stackwatch import __version__
from stackwatch.config import Config, ConfigError, load_config
from stackwatch.exposition import header, histogram_lines, line, render_labels
from stackwatch.httpclient import close_clients
from stackwatch.probes import registry
from stackwatch.scheduler import LAG_BUCKETS, Scheduler
from stackwatch.store import Store

log = logging.getLogger("stackwatch")

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Exporter:
    def __init__(self, config_path: str | Path, config: Config):
        self.config_path = str(config_path)
        self.config = config
        self.store = Store()
        self.scheduler: Scheduler | None = None
        self.reload_ok = True
        self.reload_success_at = time.time()
        self.reloads_failed = 0
        self.last_reload_error = ""
        self.started_at = time.time()
        self.ready = False

    def _notify_kinds(self, config: Config) -> None:
        for name, kind in registry().items():
            if kind.on_reload is not None:
                kind.on_reload([t for t in config.targets if t.kind == name])

    async def start(self) -> None:
        self._notify_kinds(self.config)
        self.store.set_targets(self.config)
        self.scheduler = Scheduler(self.store.record, self.config.scheduler)
        self.scheduler.apply(self.config)
        # Config models and imported modules live for the whole run: keep them out of the
        # cyclic GC's generations so full collections stay short (research/perf-baseline.md §6).
        gc.freeze()
        self.ready = True
        log.info("started", extra={"config": self.config_path, "targets": len(self.config.targets)})

    async def stop(self) -> None:
        self.ready = False
        if self.scheduler is not None:
            await self.scheduler.stop()
        await close_clients()

    def reload(self) -> tuple[bool, str]:
        """Load the config file again.  A bad file keeps the running config and flips the reload metric."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.reload_ok = False
            self.reloads_failed += 1
            self.last_reload_error = exc.render()
            log.error("reload failed, keeping the running config", extra={"error": exc.render()})
            return False, exc.render()
        self.config = new
        self._notify_kinds(new)
        self.store.set_targets(new)
        assert self.scheduler is not None
        self.scheduler.apply(new)
        self.reload_ok = True
        self.reload_success_at = time.time()
        self.last_reload_error = ""
        gc.freeze()  # the new config's models live until the next reload, as at start
        log.info("config reloaded", extra={"targets": len(new.targets)})
        return True, new.summary()

    # ----------------------------------------------------------------- self metrics

    def self_metrics(self, openmetrics: bool) -> list[str]:
        out: list[str] = []

        def gauge(name: str, help_text: str, rows: list[tuple[str, float]], mtype: str = "gauge") -> None:
            out.append(header(name, mtype, help_text, openmetrics))
            out.extend(line(name, labels, value) for labels, value in rows)

        gauge("stackwatch_build_info", "stackwatch's version and Python version (value 1).",
              [(render_labels([("version", __version__), ("python_version", platform.python_version())]), 1)])
        gauge("stackwatch_config_last_reload_successful", "1 if the last config (re)load succeeded.",
              [("", 1 if self.reload_ok else 0)])
        gauge("stackwatch_config_last_reload_success_timestamp_seconds",
              "When the config was last loaded successfully, as a Unix timestamp.", [("", self.reload_success_at)])
        gauge("stackwatch_config_reload_failures_total", "Config reloads rejected since start.",
              [("", self.reloads_failed)], "counter")
        counts: dict[str, int] = {k: 0 for k in registry()}
        for t in self.config.targets:
            counts[t.kind] = counts.get(t.kind, 0) + 1
        gauge("stackwatch_targets", "Configured targets by probe kind.",
              [(render_labels([("kind", k)]), n) for k, n in sorted(counts.items())])
        sched = self.scheduler
        gauge("stackwatch_probes_in_flight", "Probes running right now.", [("", sched.in_flight if sched else 0)])
        gauge("stackwatch_scheduler_skipped_runs_total",
              "Scheduled probe runs skipped because the previous run of the target ended late.",
              [("", sched.skipped if sched else 0)], "counter")
        out.append(header("stackwatch_scheduler_lag_seconds", "histogram",
                          "Delay between a probe's planned start and the moment it got a concurrency slot.",
                          openmetrics))
        out.append(histogram_lines("stackwatch_scheduler_lag_seconds", "", LAG_BUCKETS,
                                   sched.lag_buckets if sched else [0] * (len(LAG_BUCKETS) + 1),
                                   sched.lag_sum if sched else 0.0))
        out.extend(self._process_metrics(openmetrics))
        return out

    def _process_metrics(self, openmetrics: bool) -> list[str]:
        try:
            stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(stat[11]) + int(stat[12])) / _CLK_TCK
            rss = int(stat[21]) * _PAGE
        except (OSError, IndexError, ValueError):
            return []
        return [
            header("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
                   openmetrics),
            line("process_cpu_seconds_total", "", cpu),
            header("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", openmetrics),
            line("process_resident_memory_bytes", "", rss),
            header("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
                   openmetrics),
            line("process_start_time_seconds", "", self.started_at),
        ]
