"""Running one probe: the kinds, their state, and the hard deadline around every probe.

:class:`Probers` is created by the exporter (and by tests) with the kinds to run.  It owns each
kind's :class:`~stackwatch.probes.base.KindState` (HTTP clients, SQL engines, thread pools,
history), tells the states about every (re)load and closes them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from stackwatch.config import Config, TargetConfig
from stackwatch.probes.base import (
    KindState,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeResult,
    Reason,
    release_exception,
)
from stackwatch.redact import scrub

log = logging.getLogger("stackwatch.runner")


class Probers:
    def __init__(self, kinds: Mapping[str, ProbeKind]):
        self.kinds = dict(kinds)
        self.states: dict[str, KindState] = {name: k.state() for name, k in self.kinds.items() if k.state}

    def reload(self, config: Config) -> None:
        """Give each kind's state the kind's targets after a (re)load."""
        for name, state in self.states.items():
            state.reload([t for t in config.targets if t.kind == name])

    async def close(self) -> None:
        for state in self.states.values():
            try:
                await state.close()
            except Exception:  # shutdown goes on for the other kinds
                log.debug("closing a kind's state failed", exc_info=True)

    async def run(self, target: TargetConfig, verbose: bool = True) -> ProbeResult:
        """Run one probe of a target under its hard deadline; always returns a ProbeResult.

        ``verbose`` keeps the probe's debug log (for /probe?debug=true and tests)."""
        kind = self.kinds[target.kind]
        timeout = target.deadline
        ctx = ProbeContext(target, timeout, verbose, self.states.get(target.kind))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                result = await kind.probe(target, ctx)
            if not isinstance(result, ProbeResult):
                result = ctx.failure(Reason.INTERNAL, f"probe returned {type(result).__name__}, not a ProbeResult")
        except TimeoutError:
            result = ctx.failure(Reason.TIMEOUT, f"no result within the timeout of {timeout:g}s")
        except ProbeFailure as exc:
            result = ctx.failure(exc.reason, exc.message)
            release_exception(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken probe must not reach the scheduler
            log.debug("probe %s raised", target.name, exc_info=True)
            result = ctx.failure(Reason.INTERNAL,
                                 f"probe raised {type(exc).__name__}: {scrub(str(exc), target.secrets())}")
            release_exception(exc)
        result.duration = ctx.latency if ctx.latency is not None else time.perf_counter() - started
        result.finished_at = time.time()
        return result
