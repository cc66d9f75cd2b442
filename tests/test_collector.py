"""/metrics bodies built from the kept samples: every target's series in every format, each
result shown once a new body is built, only where results changed, and the plain body the same
series as the gzip one.  The results are ProbeResults as the probes make them (the probes
themselves are tested against real servers elsewhere); here what matters is what the collector
renders of them, across many phase groups."""

from __future__ import annotations

import asyncio
import gzip
import time

from expo import parse, value
from stackwatch.collector import Collector
from stackwatch.exposition import Format
from stackwatch.kinds import parse_config
from stackwatch.probes.base import Family, ProbeResult, Reason
from stackwatch.series import Lines, base_labels
from stackwatch.store import Store

STATUS = Family("stackwatch_http_status_code", "gauge", "HTTP status code of the last response.")
INFO = Family("stackwatch_http_body_info", "gauge", "Fields of the JSON body chosen in the target's info block.")
N = 1000  # five phase groups of ~200 targets


def make(n: int = N) -> tuple[Store, Collector]:
    text = "targets:\n" + "".join(f"  - {{name: t{i}, kind: http, url: 'http://127.0.0.1:9/{i}'}}\n" for i in range(n))
    lines = Lines()
    store = Store(base_labels, lines.keep)
    store.set_targets(parse_config(text))
    return store, Collector(store, lines)


def result(i: int, ok: bool = True, version: str = "1.0") -> ProbeResult:
    samples = [(STATUS, (), 200.0 if ok else 503.0), (INFO, (("key", "version"), ("value", version)), 1.0),
               (STATUS, (), 999.0)]  # the same series twice: kept once, the first value
    return ProbeResult(ok, None if ok else Reason.HTTP_STATUS, "" if ok else "status 503", 0.01 * (i % 7),
                       samples=samples, finished_at=time.time())


async def body(collector: Collector, compress: bool, openmetrics: bool = False) -> str:
    parts = await collector.render(Format(openmetrics), lambda om: b"", compress)
    data = b"".join(parts)
    return (gzip.decompress(data) if compress else data).decode()


def test_every_target_in_every_format_and_the_plain_body_equals_the_gzip_one():
    async def main():
        store, collector = make()
        assert len(store.groups) > 1
        for i in range(N):
            store.record(f"t{i}", result(i, ok=i % 10 != 0, version="é-ünïcode" if i == 7 else "1.0"))
        plain, zipped, om = await body(collector, False), await body(collector, True), await body(collector, True, True)
        collector.close()
        return plain, zipped, om

    plain, zipped, om = asyncio.run(main())
    assert plain == zipped
    for text in (plain, om):
        s = parse(text)
        assert len(s["stackwatch_probe_success"]) == N
        assert value(s, "stackwatch_probe_success", target="t10") == 0
        assert value(s, "stackwatch_probe_failure_reason", target="t10", reason="http_status") == 1
        assert value(s, "stackwatch_http_status_code", target="t10") == 503
        assert value(s, "stackwatch_http_status_code", target="t11") == 200  # not the repeated 999
        assert value(s, "stackwatch_http_body_info", target="t7", value="é-ünïcode") == 1
        assert len(s["stackwatch_http_status_code"]) == N


def test_a_new_result_shows_in_the_next_body_and_only_its_group_is_rendered_again():
    async def main():
        store, collector = make()
        for i in range(N):
            store.record(f"t{i}", result(i))
        first = parse(await body(collector, True))
        rendered: list[int] = []
        render_into = collector.lines.render_into

        def counting(states, into):
            states = list(states)
            rendered.append(len(states))
            render_into(states, into)

        collector.lines.render_into = counting  # type: ignore[method-assign]
        store.record("t3", result(3, ok=False))
        second = parse(await body(collector, True))
        plain = parse(await body(collector, False))  # from the same members: nothing rendered
        collector.close()
        group = len(store.groups[store.states["t3"].group])
        return first, second, plain, sum(rendered), group

    first, second, plain, rendered, group = asyncio.run(main())
    assert value(first, "stackwatch_probe_success", target="t3") == 1
    assert value(second, "stackwatch_probe_success", target="t3") == 0
    assert value(second, "stackwatch_probes_total", target="t3", result="failure") == 1
    assert value(plain, "stackwatch_probe_success", target="t3") == 0
    assert value(second, "stackwatch_probes_total", target="t4", result="success") == 1
    assert rendered == group < N  # one phase group rendered again, not every target


def test_a_body_never_holds_targets_a_reload_removed():
    async def main():
        store, collector = make()
        for i in range(N):
            store.record(f"t{i}", result(i))
        await body(collector, True)
        text = "targets:\n" + "".join(f"  - {{name: n{i}, kind: http, url: 'http://127.0.0.1:9/{i}'}}\n" for i in range(3))
        store.set_targets(parse_config(text))
        out = parse(await body(collector, True)), parse(await body(collector, False))
        collector.close()
        return out

    for s in asyncio.run(main()):
        assert sorted(lab["target"] for lab, _ in s["stackwatch_probe_interval_seconds"]) == ["n0", "n1", "n2"]
        assert "stackwatch_probe_success" not in s  # not probed yet: no result series
