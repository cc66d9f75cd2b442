"""The /metrics body: every target's lines (rendered by stackwatch.series) joined per family,
cached per format until a result changes it, gzipped as members per (family, phase group) that
are rebuilt only where results changed; stackwatch's own series appended fresh per scrape.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field

from stackwatch.exposition import Format, header
from stackwatch.probes.base import Family
from stackwatch.series import Lines
from stackwatch.store import Store


class Collector:
    """Serves cached /metrics bodies joined from the targets' lines (stackwatch.series).

    Bodies: one cache per (format, gzip) that was asked for, each
    dropped when nobody asked for it in :data:`UNUSED_AFTER` seconds; a gzip body is compressed as
    it is built, so no uncompressed copy of it is ever held.
    """

    def __init__(self, store: Store, lines: Lines) -> None:
        self.store = store
        self.lines = lines
        self._cache: dict[tuple[bool, bool], _Body] = {}
        self._rebuilding: dict[tuple[bool, bool], asyncio.Task[_Body]] = {}
        self._locks: dict[tuple[bool, bool], asyncio.Lock] = {}
        self._zipper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stackwatch-gzip")
        self._members: dict[int, tuple[int, dict[str, bytes]]] = {}
        """phase group -> (group version, family -> gzip member of the group's lines of it)."""
        self._members_generation = -1
        self._headers: dict[tuple[str, str, str, bool], bytes] = {}
        self._last_scrape: dict[tuple[bool, bool], float] = {}
        self._build_seconds: dict[tuple[bool, bool], float] = {}
        self._prebuild: dict[tuple[bool, bool], asyncio.TimerHandle] = {}

    def close(self) -> None:
        for timer in self._prebuild.values():
            timer.cancel()
        self._zipper.shutdown(wait=False)

    async def _build(self, openmetrics: bool, compress: bool) -> _Body:
        """Every target's series, grouped by family; gzipped when ``compress``.

        The body is a run of gzip members, one per (family, phase group of ~200 targets), kept
        between builds: a build renders and recompresses only the groups that got a result since
        their members were made.  Targets of a group are probed at about the same moment of
        their interval, so with a scrape every 2 s and probes every 15 s a build redoes ~15 % of
        the body, and a target is rendered about once per result (never when nobody scrapes).
        Rendering runs on the event loop in slices of RENDER_SLICE targets; compression in the
        collector's own thread.  The plain body (asked for rarely: curl, tests) is the same
        members decompressed in that thread, so no rendered copy of the lines is kept anywhere.
        """
        for _ in range(3):
            generation = self.store.generation
            body = await self._build_once(openmetrics, compress)
            if self.store.generation == generation:
                body.generation = generation
                return body
            # a reload replaced the targets while this body was built: it could hold both sets
        body = await self._build_once(openmetrics, compress)
        body.generation = self.store.generation
        return body

    async def _refresh_members(self) -> None:
        """Render and compress the phase groups that changed since their members were made."""
        store = self.store
        if self._members_generation != store.generation:
            self._members = {}
            self._members_generation = store.generation
        members = self._members
        versions = list(store.group_versions)
        groups = store.groups
        big = len(store.states) > 1000
        loop = asyncio.get_running_loop()
        batch: list[tuple[int, int, dict[str, bytes]]] = []
        size = 0

        async def compress_batch() -> None:
            nonlocal batch, size
            # zlib releases the GIL: the event loop (and the probes' timestamps) never wait for it
            packed = await loop.run_in_executor(self._zipper, _gzip_groups, [b[2] for b in batch])
            for (g, ver, _), data in zip(batch, packed):
                members[g] = (ver, data)
            batch, size = [], 0

        # Rendered groups go to the gzip thread in batches as they are made: at most
        # COMPRESS_CHUNK uncompressed bytes are held at a time, never the whole body.
        started = yielded = time.monotonic()
        for g, group in enumerate(groups):
            held = members.get(g)
            if held is not None and held[0] == versions[g]:
                continue
            texts: dict[str, list[str]] = {}
            for i in range(0, len(group), RENDER_SLICE):
                self.lines.render_into(group[i:i + RENDER_SLICE], texts)
                if big:
                    now = time.monotonic()
                    # Give the loop back after every slice (~1.5 ms) while the build is young; a
                    # build that has run a second (many groups changed, or a busy loop that keeps
                    # it waiting at every yield) takes LONG_SLICE at a time, so it ends.
                    if now - yielded >= (0 if now - started < 1.0 else LONG_SLICE):
                        await asyncio.sleep(0)
                        yielded = time.monotonic()
            data = {name: "".join(parts).encode() for name, parts in texts.items()}
            batch.append((g, versions[g], data))
            size += sum(len(d) for d in data.values())
            if size >= COMPRESS_CHUNK:
                await compress_batch()
        if batch:
            await compress_batch()

    async def _build_once(self, openmetrics: bool, compress: bool) -> _Body:
        store = self.store
        version = store.version
        await self._refresh_members()
        # (a reload during the refresh leaves groups without members: _build discards that body)
        groups = [held[1] for _, held in sorted(self._members.items())]
        names = self.lines.families_in_use()
        if not compress:
            order = [(name, [g.get(name, b"") for g in groups]) for name in names]
            texts = await asyncio.get_running_loop().run_in_executor(self._zipper, _gunzip_groups, order)
            parts: list[bytes] = []
            for name, text in zip(names, texts):
                fam = self.lines.family(name)
                parts.append(header(fam.name, fam.type, fam.help, openmetrics).encode())
                parts.append(text)
            return _Body(version, time.monotonic(), parts)
        parts = []
        for name in names:
            parts.append(self._header_member(self.lines.family(name), openmetrics))
            for g in groups:
                data = g.get(name)
                if data:
                    parts.append(data)
        return _Body(version, time.monotonic(), parts)

    def _header_member(self, fam: Family, openmetrics: bool) -> bytes:
        key = (fam.name, fam.type, fam.help, openmetrics)
        data = self._headers.get(key)
        if data is None:
            data = self._headers[key] = _gzip(header(fam.name, fam.type, fam.help, openmetrics).encode())
        return data

    async def targets_body(self, openmetrics: bool, compress: bool = False) -> _Body:
        """The target part of /metrics, rebuilt only when a result arrived since the last build.

        With many targets (over LARGE) a scrape does not wait for a rebuild: it gets the last
        complete body (at most STALE_AFTER seconds old) while a rebuild runs in the background.
        Prometheus scrapes every 15 s or so and probe results are up to one interval old anyway.
        """
        key = (openmetrics, compress)
        now = time.monotonic()
        if len(self.store.states) > LARGE:
            self._plan_prebuild(key, now)
        for other, body in list(self._cache.items()):
            if other != key and now - body.used_at > UNUSED_AFTER:
                del self._cache[other]  # a format nobody asks for any more
        cached = self._cache.get(key)
        if cached is not None and cached.generation == self.store.generation:
            cached.used_at = now
            if cached.version == self.store.version:
                return cached
            if len(self.store.states) > LARGE and now - cached.built_at < STALE_AFTER:
                task = self._rebuilding.get(key)
                if task is None or task.done():
                    self._rebuilding[key] = asyncio.create_task(self._rebuild(key))
                return cached
        return await self._rebuild(key)

    def _plan_prebuild(self, key: tuple[bool, bool], now: float) -> None:
        """Prometheus scrapes at a fixed interval: build the next body shortly before the next
        scrape is due, so that scrape is served at once from a body well under a second old."""
        last = self._last_scrape.get(key)
        self._last_scrape[key] = now
        if last is None:
            return
        interval = now - last
        if not 0.5 <= interval <= 300:
            return
        lead = min(interval / 2, 2 * self._build_seconds.get(key, 0.1) + 0.2)
        timer = self._prebuild.get(key)
        if timer is not None:
            timer.cancel()

        def start() -> None:
            task = self._rebuilding.get(key)
            if task is None or task.done():
                self._rebuilding[key] = asyncio.create_task(self._rebuild(key))

        self._prebuild[key] = asyncio.get_running_loop().call_later(interval - lead, start)

    async def _rebuild(self, key: tuple[bool, bool]) -> _Body:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:  # concurrent scrapes share one build
            cached = self._cache.get(key)
            if cached is not None and cached.version == self.store.version \
                    and cached.generation == self.store.generation:
                return cached
            started = time.monotonic()
            body = await self._build(*key)
            self._build_seconds[key] = time.monotonic() - started
            if cached is not None:
                body.used_at = cached.used_at
            self._cache[key] = body
            return body

    async def render(self, fmt: Format, extra: Callable[[bool], bytes], compress: bool) -> list[bytes]:
        """The /metrics body as a list of parts: target series, then ``extra`` self metrics
        (always fresh).  Gzipped parts are separate gzip members, which every gzip reader
        (Go's included) concatenates, so the big part is compressed once per build, not per scrape.
        """
        body = await self.targets_body(fmt.openmetrics, compress)
        tail = extra(fmt.openmetrics) + (b"# EOF\n" if fmt.openmetrics else b"")
        if not compress:
            return [*body.parts, tail]
        return [*body.parts, _gzip(tail)]


@dataclass(slots=True)
class _Body:
    version: int
    built_at: float
    parts: list[bytes]
    """The body, gzipped for a gzip cache entry: the kept gzip members themselves, not a joined
    copy of them (at 50k targets that copy was 12 MB held between scrapes)."""
    generation: int = -1
    """The store's target set (Store.generation) the body was built from: a body of another
    set (before a reload) is never served, however recent."""
    used_at: float = field(default_factory=time.monotonic)


LARGE = 2000
STALE_AFTER = 5.0
COMPRESS_CHUNK = 256 * 1024
"""Uncompressed bytes handed to the gzip thread at a time."""
RENDER_SLICE = 50
"""Targets rendered between two yields to the event loop (~1.5 ms: probes' answers are not
held up behind a build)."""
LONG_SLICE = 0.02
"""Seconds rendered between two yields once a build has run for a second.  Measured at 100k
targets on 2 overloaded CPUs (bench/RESULTS.md): with a yield every 50 targets throughout, a
build from scratch waited behind every probe callback at each of its ~1,000 yields, and a
scrape took 35 s."""
UNUSED_AFTER = 60.0
"""A cached body of a format nobody asked for in this long is dropped."""


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


def _gzip_groups(groups: list[dict[str, bytes]]) -> list[dict[str, bytes]]:
    # Level 1: 4-5x faster than level 9 for ~12 % more bytes.  Empty input stays empty (no member).
    return [{name: zlib.compress(d, 1, 16 + zlib.MAX_WBITS) for name, d in group.items() if d} for group in groups]


def _gunzip_groups(order: list[tuple[str, list[bytes]]]) -> list[bytes]:
    """Per family, its groups' members decompressed and joined."""
    return [b"".join(zlib.decompress(m, 16 + zlib.MAX_WBITS) for m in members if m) for _, members in order]
