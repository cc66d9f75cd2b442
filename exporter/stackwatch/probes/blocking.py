"""Blocking calls (SQL drivers, the Algorand SDK) under a wall-clock deadline that always holds.

A socket timeout bounds each read, not the call: a server that sends one byte a second keeps a
blocking client busy far past the probe's deadline.  A fixed thread pool would then lose a worker
to every such call, and a handful of dripping targets would stall every other target of the kind.

:class:`BlockingRunner` runs each call in a thread of its own (an idle one from earlier calls when
there is one: a thread is started only when every earlier one is busy, and exits after a minute
without work) and waits for it until the deadline only.  A call still running then is
*abandoned*: the probe fails with ``timeout`` at once, the
thread finishes (or not) on its own and its result is dropped, and nothing waits for it, so the
capacity left for other targets is unchanged.  Threads in flight are bounded by the scheduler's
per-kind limit; abandoned ones by ``max_abandoned`` (past it, new calls fail fast instead of
piling up threads).  ``stuck`` and ``abandoned_total`` are exported per kind.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from stackwatch.probes.base import ProbeFailure, Reason, release_exception

T = TypeVar("T")


IDLE_EXIT = 60.0
"""Seconds an idle worker thread waits for another call before it exits."""


class _Worker:
    """A thread running one call at a time, then offering itself to the runner again."""

    def __init__(self, runner: BlockingRunner):
        self.runner = runner
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=f"stackwatch-{runner.name}", daemon=True).start()

    def _loop(self) -> None:
        runner = self.runner
        while True:
            try:
                job = self.jobs.get(timeout=IDLE_EXIT)
            except queue.Empty:
                with runner._lock:
                    if self in runner._idle:
                        runner._idle.remove(self)
                        return
                continue  # taken from the idle list meanwhile: its call is on its way
            job()
            job = None  # nothing of the call outlives it
            with runner._lock:
                runner._idle.append(self)


class BlockingRunner:
    def __init__(self, name: str, max_abandoned: int = 64):
        self.name = name
        self.max_abandoned = max_abandoned
        self.stuck = 0
        """Abandoned calls whose thread is still running."""
        self.abandoned_total = 0
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    async def run(self, fn: Callable[[], T], deadline: float) -> T:
        """``fn()`` in a new thread; its result, or ProbeFailure(timeout) at ``deadline``
        (time.monotonic()).  Exceptions of ``fn`` propagate."""
        if self.stuck >= self.max_abandoned:
            raise ProbeFailure(Reason.TIMEOUT, f"{self.stuck} earlier {self.name} calls are stuck past their deadline; "
                                               "not starting another until they end")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        state = {"abandoned": False, "finished": False}

        def deliver(ok: bool, value: Any) -> None:
            if future.done():
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def work() -> None:
            try:
                value, ok = fn(), True
            except BaseException as exc:  # delivered to the waiting probe, which classifies it
                if isinstance(exc, ProbeFailure):
                    release_exception(exc)  # an expected failure: its reason and message are all it carries
                value, ok = exc, False
            try:
                with self._lock:
                    state["finished"] = True
                    if state["abandoned"]:
                        self.stuck -= 1
                        return
                try:
                    loop.call_soon_threadsafe(deliver, ok, value)
                except RuntimeError:  # the loop is closed (shutdown)
                    pass
            finally:
                value = None  # an exception here would hold this frame through its traceback: a cycle

        with self._lock:
            worker = self._idle.pop() if self._idle else None
        (worker or _Worker(self)).jobs.put(work)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._abandon(state)
            raise ProbeFailure(Reason.TIMEOUT, f"no answer within the deadline; the blocking {self.name} call "
                                               "was abandoned") from None
        except asyncio.CancelledError:
            self._abandon(state)
            raise

    def _abandon(self, state: dict[str, bool]) -> None:
        with self._lock:
            if not state["finished"] and not state["abandoned"]:
                state["abandoned"] = True
                self.stuck += 1
                self.abandoned_total += 1
