"""Large config files are parsed and validated in a child process.

Parsing YAML with every node's position (for located errors) allocates several times the
memory of the targets it yields, and the targets' own strings are allocated among those
temporaries: once they are freed, the allocator's pools stay pinned by the survivors.  Measured
with bench/memory.py at 50,000 HTTP targets: loaded in-process, the config held 133 MB of RSS
above the imports; loaded here and handed over pickled, 61 MB, in a fresh, dense heap.  A
``--workers`` shard keeps only its own targets, so the other shards' models never reach its heap
either.

The child runs ``python -m stackwatch.kinds`` (which knows the built-in kinds; this module knows
none) with the parent's environment: :func:`serve` reads (path, env, shard) pickled on stdin and
writes ("ok", Config) or ("error", ConfigError) pickled on stdout.  Only the exporter's own child writes what is unpickled here.  Small files
(under ISOLATE_BYTES) and configs with kinds other than the built-in ones load in-process; so
does any file when the child cannot run (it is logged, and the load is the same).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from stackwatch import config as _config
from stackwatch.loader import ConfigError

log = logging.getLogger("stackwatch.config")

ISOLATE_BYTES = 256 * 1024
"""Files from this size (~2,000 targets) are loaded in a child process: below it, starting the
child (~0.4 s of imports) costs more than the heap it spares."""


def isolated(path: str | Path) -> bool:
    """Whether a load of ``path`` goes through a child process."""
    if os.environ.get("STACKWATCH_CONFIG_IN_PROCESS"):
        return False
    try:
        return os.stat(path).st_size >= ISOLATE_BYTES
    except OSError:
        return False  # the in-process load reports the file's error, located as usual


Load = Callable[[str, "dict[str, str] | None", "tuple[int, int]"], _config.Config]
CHILD = "stackwatch.kinds"
"""The module the child runs: its ``__main__`` calls :func:`serve` with the built-in kinds' load."""


def load(path: str | Path, env: dict[str, str] | None, shard: tuple[int, int], in_process: Load) -> _config.Config:
    """``in_process(path, env, shard)``'s result, computed in a child process; in this process
    when the child fails to run or to answer."""
    request = pickle.dumps((str(path), env, shard), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        proc = subprocess.run([sys.executable, "-m", CHILD], input=request,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    except OSError as exc:
        log.warning("config loader process did not start (%s); loading in this process", exc.strerror)
        return in_process(str(path), env, shard)
    if proc.returncode != 0 or not proc.stdout:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        log.warning("config loader process failed (exit code %s%s); loading in this process",
                    proc.returncode, f": {tail[0][:200]}" if tail[0] else "")
        return in_process(str(path), env, shard)
    status, value = pickle.loads(proc.stdout)
    if status == "error":
        raise value
    return value


def serve(in_process: Load) -> None:
    """The child's side: one request from stdin, its result to stdout."""
    path, env, shard = pickle.load(sys.stdin.buffer)
    try:
        out: tuple[str, object] = ("ok", in_process(path, env, shard))
    except ConfigError as exc:
        out = ("error", exc)
    sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
