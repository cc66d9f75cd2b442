"""The probe kinds stackwatch runs, listed explicitly (as blackbox_exporter's prober map).

Adding a kind means writing one module under :mod:`stackwatch.probes` with its config model,
probe coroutine and ``KIND``, and adding that ``KIND`` here.  The config loader gets the kinds'
config models from here, so :mod:`stackwatch.config` imports no probe module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from stackwatch import config as _config, loadproc
from stackwatch.probes import algorand, consistency, heartbeat, http, jsonapi, sql
from stackwatch.probes.base import ProbeKind

BUILTIN: tuple[ProbeKind, ...] = (http.KIND, jsonapi.KIND, sql.KIND, algorand.KIND, consistency.KIND, heartbeat.KIND)
BUILTIN_BY_NAME = {k.name: k for k in BUILTIN}


def builtin_kinds() -> dict[str, ProbeKind]:
    """A new mapping of kind name to kind (callers may add their own kinds to it)."""
    return {k.name: k for k in BUILTIN}


def config_models(kinds: Mapping[str, ProbeKind] | None = None) -> dict[str, type[_config.TargetConfig]]:
    return {name: k.config_model for name, k in (kinds or builtin_kinds()).items()}


def load_config(path: str | Path, env: dict[str, str] | None = None,
                kinds: Mapping[str, ProbeKind] | None = None, shard: tuple[int, int] = (0, 1)) -> _config.Config:
    """Load a config file with the built-in kinds (or the given ones); with ``shard``, keep only
    the shard's targets (all are validated).  A large file with the built-in kinds is loaded in
    a child process (stackwatch.loadproc: the parse's garbage never reaches this heap)."""
    if (kinds is None or all(BUILTIN_BY_NAME.get(n) is k for n, k in kinds.items())) and loadproc.isolated(path):
        return loadproc.load(path, env, shard, _load_builtin)
    return _config.load_config(path, env, kinds=config_models(kinds), shard=shard)


def _load_builtin(path: str, env: dict[str, str] | None, shard: tuple[int, int]) -> _config.Config:
    return _config.load_config(path, env, kinds=config_models(), shard=shard)


def parse_config(text: str, source: str = "<memory>", env: dict[str, str] | None = None,
                 kinds: Mapping[str, ProbeKind] | None = None) -> _config.Config:
    return _config.parse_config(text, source, env, kinds=config_models(kinds))


if __name__ == "__main__":  # the config loader's child process (stackwatch.loadproc)
    loadproc.serve(_load_builtin)
