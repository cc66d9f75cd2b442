"""Long loops that share the event loop with probing: yield once they have held it for a while.

The status page and the JSON API walk every target; at thousands of targets one walk takes
hundreds of milliseconds, during which no probe starts and no answer is timed.  A loop that
calls ``await slicer.pause()`` per item gives the loop back every ``budget`` seconds, so
probes start at most that late (stackwatch_scheduler_lag_seconds)."""

from __future__ import annotations

import asyncio
from time import perf_counter

BUDGET = 0.002


class Slicer:
    __slots__ = ("budget", "_since")

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._since = perf_counter()

    async def pause(self) -> None:
        """Yield to the event loop if this work has run ``budget`` seconds since it last did."""
        if perf_counter() - self._since >= self.budget:
            await asyncio.sleep(0)
            self._since = perf_counter()
