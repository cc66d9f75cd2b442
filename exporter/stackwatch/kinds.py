"""The probe kinds stackwatch runs, listed explicitly (as blackbox_exporter's prober map).

Adding a kind means writing one module under :mod:`stackwatch.probes` with its config model,
probe coroutine and ``KIND``, and adding that ``KIND`` here.  The config loader gets the kinds'
config models from here, so :mod:`stackwatch.config` imports no probe module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from stackwatch import config as _config
from stackwatch.probes import algorand, consistency, heartbeat, http, jsonapi, sql
from stackwatch.probes.base import ProbeKind

BUILTIN: tuple[ProbeKind, ...] = (http.KIND, jsonapi.KIND, sql.KIND, algorand.KIND, consistency.KIND, heartbeat.KIND)


def builtin_kinds() -> dict[str, ProbeKind]:
    """A new mapping of kind name to kind (callers may add their own kinds to it)."""
    return {k.name: k for k in BUILTIN}


def config_models(kinds: Mapping[str, ProbeKind] | None = None) -> dict[str, type[_config.TargetConfig]]:
    return {name: k.config_model for name, k in (kinds or builtin_kinds()).items()}


def load_config(path: str | Path, env: dict[str, str] | None = None,
                kinds: Mapping[str, ProbeKind] | None = None, shard: tuple[int, int] = (0, 1)) -> _config.Config:
    """Load a config file with the built-in kinds (or the given ones); with ``shard``, keep only
    the shard's targets (all are validated)."""
    return _config.load_config(path, env, kinds=config_models(kinds), shard=shard)


def parse_config(text: str, source: str = "<memory>", env: dict[str, str] | None = None,
                 kinds: Mapping[str, ProbeKind] | None = None) -> _config.Config:
    return _config.parse_config(text, source, env, kinds=config_models(kinds))
