"""Probe kinds.  Each module here that defines ``KIND`` is registered under ``KIND.name``.

Adding a kind means adding one module with its config model, probe coroutine and KIND.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from stackwatch.probes.base import ProbeKind


@cache
def registry() -> dict[str, ProbeKind]:
    kinds: dict[str, ProbeKind] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, ProbeKind):
            if kind.name in kinds:
                raise RuntimeError(f"probe kind {kind.name!r} is defined twice")
            kinds[kind.name] = kind
    return kinds
