"""Running probes in tests: the built-in kinds with their state, one set per event loop (each
async test has its own loop), closed by ``close_clients()``."""

from __future__ import annotations

import asyncio

from stackwatch.kinds import builtin_kinds
from stackwatch.runner import Probers

_current: tuple[asyncio.AbstractEventLoop, Probers] | None = None


def probers() -> Probers:
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current[0] is not loop:
        _current = (loop, Probers(builtin_kinds()))
    return _current[1]


async def run_probe(target, verbose: bool = True):
    return await probers().run(target, verbose)


async def close_clients() -> None:
    global _current
    if _current is not None:
        _, p = _current
        _current = None
        await p.close()
