"""The running exporter: config, kinds and their state, scheduler, store and collector; reloads."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stackwatch.collector import Collector
from stackwatch.config import Config, ConfigError, Problem
from stackwatch.cooperative import Slicer
from stackwatch.history import History
from stackwatch.kinds import builtin_kinds, load_config
from stackwatch.listener import Stats
from stackwatch.probes.base import ProbeKind
from stackwatch.push import Pusher
from stackwatch.runner import Probers
from stackwatch.scheduler import Scheduler
from stackwatch.selfmetrics import GCPauses, SelfMetrics
from stackwatch.series import Lines, base_labels
from stackwatch.state import StateStore
from stackwatch.store import Store
from stackwatch.remote import RemoteError
from stackwatch.statuspage import Remotes
from stackwatch.webconfig import BasicAuthChecker, WebConfig, check_reload, load_web_config

log = logging.getLogger("stackwatch")

FREEZE_EVERY = float(os.environ.get("STACKWATCH_GC_FREEZE_EVERY", "5"))
SWEEP_EVERY = 3600.0
SWITCH_INTERVAL = float(os.environ.get("STACKWATCH_SWITCH_INTERVAL", "0.001"))
SILENCE_EVERY = float(os.environ.get("STACKWATCH_SILENCE_SYNC_EVERY", "60"))
HISTORY_EVERY = float(os.environ.get("STACKWATCH_HISTORY_SAVE_EVERY", "300"))
HISTORY_NAMESPACE = "history"
INCIDENTS_KEY = ("incidents", "log")
"""Where the status page's incident log is saved in the state store (with the history)."""
SWEEP_GROWTH = 0.1
SWEEP_GROWTH_MIN = 20_000


class Exporter:
    def __init__(self, config_path: str | Path, config: Config, kinds: Mapping[str, ProbeKind] | None = None,
                 web_config_path: str | None = None, web: WebConfig | None = None, shard: tuple[int, int] = (0, 1),
                 store: StateStore | None = None):
        self.config_path = str(config_path)
        self.shard = shard
        """(index, count): this replica probes only the targets of its shard (Config.shard)."""
        self.config = config.shard(*shard)
        self.web_config_path = web_config_path
        self.web = web or WebConfig()
        self.web_ssl: ssl.SSLContext | None = None
        """The listening socket's TLS context, updated in place when a reload changes the files."""
        self.listener_stats = Stats()
        self.auth = BasicAuthChecker()
        self.allow_no_auth = False
        """--web.config.allow-no-auth: a reload may turn basic auth off."""
        self.remotes = Remotes()
        """Prometheus and Alertmanager the status page reads history and alerts from (optional)."""
        self._reloading: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.kinds = dict(kinds) if kinds is not None else builtin_kinds()
        self.probers = Probers(self.kinds)
        self.state_store = store if store is not None else StateStore.memory()
        """What survives a restart (stackwatch.state); the exporter closes it at stop."""
        for state in self.probers.states.values():
            state.use_store(self.state_store)
        heartbeats = self.probers.states.get("heartbeat")
        self.pusher = Pusher(self.state_store, getattr(heartbeats, "remember", None))
        self.pusher.set_checks(self._heartbeats(config))
        self.lines = Lines()
        self.store = Store(base_labels, self.lines.keep)
        """Every target's latest outcome, counters and history; its samples kept by Lines.keep."""
        self.collector = Collector(self.store, self.lines)
        self.scheduler: Scheduler | None = None
        self.gc_pauses = GCPauses()
        self._gc_task: asyncio.Task[None] | None = None
        self.gc_baseline = 0
        """Objects frozen after the last full sweep (or load); growth past it triggers a sweep."""
        self.gc_grown = 0
        """Objects frozen since the last sweep (baseline + grown: what is frozen now)."""
        self.gc_sweeps = 0
        self._silence_task: asyncio.Task[None] | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._history_saved: set[str] = set()
        self._silence_kick: asyncio.Event | None = None
        self.silence_sync_ok = True
        self.metrics = SelfMetrics(self)
        self.reload_ok = True
        self.last_reload_error = ""
        self.ready = False

    async def start(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.probers.reload(self.config)
        self.store.set_targets(self.config)
        await self._restore_history()
        self.scheduler = Scheduler(self.probers, self.store.record, self.config.scheduler)
        self.scheduler.apply(self.config)
        # Config models and imported modules live for the whole run: keep them out of the
        # cyclic GC's generations so full collections stay short.
        gc.freeze()
        self.gc_pauses.install()
        self._gc_task = asyncio.create_task(self._keep_gc_short())
        self._history_task = asyncio.create_task(self._save_history_every())
        self.ready = True
        self._silences()
        for warning in self.config.warnings():
            log.warning("config warning", extra={"warning": warning})
        log.info("started", extra={"config": self.config_path, "targets": len(self.config.targets)})

    async def _keep_gc_short(self) -> None:
        """Keep the cyclic garbage collector's full passes short and rare, without keeping garbage.

        Targets' states, histories and last outcomes live for minutes to forever; left in the
        collector's oldest generation they make every full pass scan them all (7 passes of
        ~80 ms in 30 s at 10k targets, each stopping probing and delaying the answers that
        arrive meanwhile).  Every FREEZE_EVERY seconds a pass over everything not yet frozen
        (what survived the last few seconds: short) frees the cycles that died meanwhile, then
        the survivors move to the permanent generation, which passes never scan; objects there
        are still freed by reference counting when dropped.

        A cycle that was still alive at a freeze (an exception and its traceback in a probe in
        flight, say) is freed only by a pass over everything.  The probes' own hot paths make
        no cycles (tests/test_gc_cycles.py); for the rest, such a sweep runs once every
        SWEEP_EVERY seconds (a pass over everything: ~30 ms at 2,000 targets, ~300 ms at 20,000),
        and sooner once the frozen objects have grown by SWEEP_GROWTH of what the last sweep left (at
        least SWEEP_GROWTH_MIN objects), so memory never grows by more than that between sweeps.  stackwatch_gc_pause_seconds shows the passes and
        stackwatch_gc_frozen_objects what is frozen."""
        last_sweep = time.monotonic()
        self.gc_baseline = gc.get_freeze_count()
        self.gc_grown = 0
        while True:
            await asyncio.sleep(FREEZE_EVERY)
            gc.collect(2)  # the permanent generation is not scanned
            # What survived since the last freeze is all that is in the collected generations
            # now: counted there, not with get_freeze_count(), which walks everything frozen
            # (~10 ms with SQLAlchemy loaded, on every period).
            self.gc_grown += len(gc.get_objects(2))
            if (time.monotonic() - last_sweep >= SWEEP_EVERY
                    or self.gc_grown > max(SWEEP_GROWTH_MIN, SWEEP_GROWTH * self.gc_baseline)):
                gc.unfreeze()
                freed = gc.collect()
                log.debug("gc sweep", extra={"grown": self.gc_grown, "freed": freed})
                last_sweep = time.monotonic()
                self.gc_sweeps += 1
                gc.freeze()
                self.gc_baseline = gc.get_freeze_count()
                self.gc_grown = 0
            else:
                gc.freeze()

    async def _restore_history(self) -> None:
        """The status page's in-memory history as saved before the last stop (or crash)."""
        try:
            saved = await asyncio.to_thread(self.state_store.values, HISTORY_NAMESPACE)
        except Exception as exc:  # noqa: BLE001 -- history is a convenience: start without it
            log.warning("cannot read the saved status history", extra={"error": str(exc)})
            return
        restored = 0
        for name, text in saved.items():
            st = self.store.states.get(name)
            if st is not None and st.history is None and isinstance(text, str):
                st.history = History.restored(text)
                restored += st.history is not None
        self._history_saved = set(saved)
        if restored:
            log.info("status history restored", extra={"targets": restored})
        try:
            text = (await asyncio.to_thread(self.state_store.values, INCIDENTS_KEY[0])).get(INCIDENTS_KEY[1])
        except Exception as exc:  # noqa: BLE001 -- as for the history
            log.warning("cannot read the saved incidents", extra={"error": str(exc)})
            return
        if text is not None:
            self.store.incidents.restore(text, set(self.store.states), time.time())

    async def save_history(self) -> None:
        """Write every target's history rings to the state store (sliced: the loop keeps going)."""
        batch: dict[str, str] = {}
        slicer = Slicer()
        pending = []
        for name, st in list(self.store.states.items()):
            if st.history is not None:
                batch[name] = st.history.dump()
            if len(batch) >= 500:
                pending.append(self.state_store.put_values(HISTORY_NAMESPACE, batch))
                batch = {}
            await slicer.pause()
        if batch:
            pending.append(self.state_store.put_values(HISTORY_NAMESPACE, batch))
        pending.append(self.state_store.put_values(INCIDENTS_KEY[0], {INCIDENTS_KEY[1]: self.store.incidents.dump()}))
        gone = self._history_saved - set(self.store.states)
        if gone:
            pending.append(self.state_store.delete_values(HISTORY_NAMESPACE, sorted(gone)))
        self._history_saved = set(self.store.states)
        for fut in pending:
            await asyncio.wrap_future(fut)

    async def _save_history_every(self) -> None:
        while True:
            await asyncio.sleep(HISTORY_EVERY)
            try:
                await self.save_history()
            except Exception as exc:  # noqa: BLE001 -- retried at the next period
                log.warning("cannot save the status history", extra={"error": str(exc)})

    async def stop(self) -> None:
        if self._history_task is not None:
            self._history_task.cancel()
            try:
                await self.save_history()
            except Exception as exc:  # noqa: BLE001 -- shutting down anyway
                log.warning("cannot save the status history", extra={"error": str(exc)})
        if self._gc_task is not None:
            self._gc_task.cancel()
        if self._silence_task is not None:
            self._silence_task.cancel()
        self.ready = False
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.probers.close()
        await self.remotes.close()
        self.collector.close()
        self.gc_pauses.remove()
        await asyncio.to_thread(self.state_store.close)

    @staticmethod
    def _heartbeats(config: Config) -> list[Any]:
        """Every heartbeat check of the whole config: a push may reach any replica or worker."""
        return list(config.heartbeats)

    def _load(self) -> tuple[Config, WebConfig]:
        return (load_config(self.config_path, kinds=self.kinds, shard=self.shard), load_web_config(self.web_config_path))

    async def reload(self) -> tuple[bool, str]:
        """Load the config (and web config) files again, in a thread, so serving and probing go
        on meanwhile.  Any failure, whatever its cause, keeps the running config, sets the reload
        metric to 0 and logs one located error."""
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:  # reloads run one at a time, in the order asked
            try:
                new, web = await asyncio.to_thread(self._load)  # the shard's targets only
                if self.web_ssl is not None and web.tls is not None:
                    web.ssl_context(into=self.web_ssl)
                elif (self.web_ssl is None) != (web.tls is None):
                    raise ConfigError(web.source or str(self.web_config_path), [Problem(
                        "tls_server_config", None, None,
                        "turning TLS on or off needs a restart (the listening socket cannot change)")])
            except ConfigError as exc:
                return self.reload_failed(exc.render())
            except Exception as exc:  # never a 500 and a stale metric: a located, logged failure
                return self.reload_failed(f"{self.config_path}: reload failed: {type(exc).__name__}: {exc}")
            try:
                changes = check_reload(self.web, web, self.allow_no_auth)
            except ConfigError as exc:
                return self.reload_failed(exc.render())
            for change in changes:
                log.warning("web config reloaded: %s", change)
            self.web = web
            self.pusher.set_checks(self._heartbeats(new))
            return await self.apply(new)

    def reload_failed(self, message: str) -> tuple[bool, str]:
        self.reload_ok = False
        self.last_reload_error = message
        self.metrics.reload_ok.set(0)
        self.metrics.reload_failures.inc()
        log.error("reload failed, keeping the running config", extra={"error": message})
        return False, message

    async def apply(self, new: Config) -> tuple[bool, str]:
        await self.store.set_targets_async(new)
        self.config = new
        self.probers.reload(new)
        assert self.scheduler is not None
        self.scheduler.apply(new)
        self.reload_ok = True
        self.last_reload_error = ""
        self.metrics.reload_ok.set(1)
        self.metrics.reload_at.set(time.time())
        gc.collect(2)  # the old config's cycles, before the freeze would keep them
        gc.freeze()  # the new config's models live until the next reload, as at start
        # The sweep baseline stays: the new config replaces the old one (whose objects leave the
        # frozen set as they are dropped), and a reload every minute must not hide growth.  A
        # reload that adds many targets triggers one sweep, which sets the baseline again.
        self._silences()
        for warning in new.warnings():
            log.warning("config warning", extra={"warning": warning})
        log.info("config reloaded", extra={"targets": len(new.targets)})
        return True, new.summary()

    def _silences(self) -> None:
        """Reconcile maintenance windows with Alertmanager's silences now (start, reload), then
        every SILENCE_EVERY seconds; after a failure again in 2, 4, 8... seconds (at most
        SILENCE_EVERY), so an Alertmanager that was down at start gets its silences once it is up."""
        if not self.remotes.alertmanager:
            return
        if self._silence_task is None or self._silence_task.done():
            self._silence_kick = asyncio.Event()
            self._silence_task = asyncio.get_running_loop().create_task(self._reconcile_silences())
        assert self._silence_kick is not None
        self._silence_kick.set()

    async def _reconcile_silences(self) -> None:
        assert self._silence_kick is not None
        backoff = 2.0
        while True:
            await self._silence_kick.wait()
            self._silence_kick.clear()
            try:
                created = await self.remotes.sync_silences(list(self.config.maintenance))
            except Exception as exc:  # noqa: BLE001 -- Alertmanager down or odd: retried, never fatal
                self.silence_sync_ok = False
                message = exc.message if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {exc}"
                log.warning("cannot sync maintenance silences", extra={"error": message, "retry_in_seconds": backoff})
                delay, backoff = backoff, min(backoff * 2, SILENCE_EVERY)
            else:
                if created:
                    log.info("maintenance silences created", extra={"count": created})
                self.silence_sync_ok = True
                delay, backoff = SILENCE_EVERY, 2.0
            try:
                await asyncio.wait_for(self._silence_kick.wait(), delay)
            except TimeoutError:
                self._silence_kick.set()

    def self_metrics(self, openmetrics: bool) -> bytes:
        return self.metrics.render(openmetrics)
