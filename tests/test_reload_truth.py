"""After a reload returns success, no /metrics body served contains a removed target, whatever
the target count: above 2,000 targets the exporter serves a body up to a few seconds old while
it builds the next one, which must never be one from before the reload (nor half of each)."""

from __future__ import annotations

import gzip
import re
import threading
import time
import urllib.request

import pytest

from harness import Stackwatch, http_post, wait_until

N = 2_300
REMOVED = range(2_100, N)  # 2,100 left: still above the cached-body threshold (2,000)


def config(servers, path, n: int) -> None:
    path.write_text("defaults: {interval: 10s, timeout: 5s}\ntargets:\n" + "".join(
        f'  - {{name: t{i}, kind: http, url: "{servers.url("/health")}"}}\n' for i in range(n)))


def scrape(base: str, gz: bool) -> str:
    req = urllib.request.Request(base + "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        data = resp.read()
    return gzip.decompress(data).decode() if gz else data.decode()


def targets(text: str) -> set[str]:
    return set(re.findall(r'^stackwatch_probe_success\{target="([^"]+)"', text, re.M))


@pytest.mark.parametrize("loop", ["uvloop"])  # the default; asyncio: looped in the notes, and test_e2e's reload test
def test_no_removed_target_after_a_successful_reload_above_the_cached_body_size(servers, tmp_path, loop):
    cfg = tmp_path / "many.yml"
    config(servers, cfg, N)
    sw = Stackwatch(cfg, tmp_path, extra=["--web.enable-lifecycle", "--log.level", "info", "--event-loop", loop])
    seen: list[tuple[float, bool, set[str]]] = []  # (when the scrape started, gzip, targets in its body)
    stop = threading.Event()

    def scraper(gz: bool) -> None:  # as Prometheus does, continuously: the cached body stays recent
        while not stop.is_set():
            started = time.monotonic()
            seen.append((started, gz, targets(scrape(sw.base, gz))))
            stop.wait(0.1)

    threads = [threading.Thread(target=scraper, args=(gz,)) for gz in (False, True)]
    try:
        for gz in (False, True):
            wait_until(lambda: len(targets(scrape(sw.base, gz))) == N, 60, f"every target in a body (gzip {gz})")
        for t in threads:
            t.start()
        time.sleep(1)
        config(servers, cfg, REMOVED.start)
        status, body = http_post(sw.base + "/-/reload")
        reloaded = time.monotonic()
        assert status == 200, body
        for gz in (True, False):  # at once: a body built before the reload would still be fresh
            seen.append((time.monotonic(), gz, targets(scrape(sw.base, gz))))
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        sw.stop()
    removed = {f"t{i}" for i in REMOVED}
    after = [(gz, ts) for started, gz, ts in seen if started > reloaded]
    assert len(after) >= 4 and any(gz for gz, _ in after) and any(not gz for gz, _ in after)
    for gz, ts in after:
        assert not ts & removed, f"{len(ts & removed)} removed targets served after the reload (gzip {gz})"
    # before the reload the bodies held every target: the check above could fail
    assert any(len(ts) == N for started, _, ts in seen if started < reloaded)
