"""The running exporter: config, kinds and their state, scheduler, store and collector; reloads."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from stackwatch.collector import Collector, SelfMetrics
from stackwatch.config import Config, ConfigError
from stackwatch.kinds import builtin_kinds, load_config
from stackwatch.probes.base import ProbeKind
from stackwatch.runner import Probers
from stackwatch.scheduler import Scheduler

log = logging.getLogger("stackwatch")


class Exporter:
    def __init__(self, config_path: str | Path, config: Config, kinds: Mapping[str, ProbeKind] | None = None):
        self.config_path = str(config_path)
        self.config = config
        self.kinds = dict(kinds) if kinds is not None else builtin_kinds()
        self.probers = Probers(self.kinds)
        self.collector = Collector()
        self.store = self.collector.store
        self.scheduler: Scheduler | None = None
        self.metrics = SelfMetrics(self)
        self.reload_ok = True
        self.reload_success_at = time.time()
        self.reloads_failed = 0
        self.last_reload_error = ""
        self.started_at = time.time()
        self.ready = False

    async def start(self) -> None:
        self.probers.reload(self.config)
        self.store.set_targets(self.config)
        self.scheduler = Scheduler(self.probers, self.store.record, self.config.scheduler)
        self.scheduler.apply(self.config)
        # Config models and imported modules live for the whole run: keep them out of the
        # cyclic GC's generations so full collections stay short.
        gc.freeze()
        self.ready = True
        log.info("started", extra={"config": self.config_path, "targets": len(self.config.targets)})

    async def stop(self) -> None:
        self.ready = False
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.probers.close()

    def reload(self) -> tuple[bool, str]:
        """Load the config file again.  A bad file keeps the running config and flips the reload metric."""
        try:
            new = load_config(self.config_path, kinds=self.kinds)
        except ConfigError as exc:
            return self.reload_failed(exc.render())
        return self.apply(new)

    def reload_failed(self, message: str) -> tuple[bool, str]:
        self.reload_ok = False
        self.reloads_failed += 1
        self.last_reload_error = message
        self.metrics.reload_ok.set(0)
        self.metrics.reload_failures.inc()
        log.error("reload failed, keeping the running config", extra={"error": message})
        return False, message

    def apply(self, new: Config) -> tuple[bool, str]:
        self.config = new
        self.probers.reload(new)
        self.store.set_targets(new)
        assert self.scheduler is not None
        self.scheduler.apply(new)
        self.reload_ok = True
        self.reload_success_at = time.time()
        self.last_reload_error = ""
        self.metrics.reload_ok.set(1)
        self.metrics.reload_at.set(self.reload_success_at)
        gc.freeze()  # the new config's models live until the next reload, as at start
        log.info("config reloaded", extra={"targets": len(new.targets)})
        return True, new.summary()

    def self_metrics(self, openmetrics: bool) -> bytes:
        return self.metrics.render(openmetrics)
