"""The status page's incident list: failing spells from probe results (memory), kept across a
restart, and the same spells from Prometheus's stackwatch_probe_failure_reason history."""

from __future__ import annotations

import json

from stackwatch.incidents import MAX_CLOSED, IncidentLog, from_reason_series

T0 = 1_800_000_000.0


def test_a_failing_spell_opens_once_and_closes_on_the_first_success():
    log = IncidentLog()
    log.record("api", T0, True, "")
    log.record("api", T0 + 10, False, "timeout: no answer in 5s")
    log.record("api", T0 + 20, False, "connection_refused: refused")  # same incident, first reason kept
    [open_] = log.recent(T0 - 1)
    assert (open_.start, open_.end, open_.reason) == (T0 + 10, None, "timeout: no answer in 5s")
    assert open_.duration(T0 + 70) == 60
    log.record("api", T0 + 30, True, "")
    [closed] = log.recent(T0 - 1)
    assert (closed.start, closed.end, closed.duration(T0 + 1000)) == (T0 + 10, T0 + 30, 20)
    assert log.recent(T0 + 31) == []  # ended before the window
    log.record("api", T0 + 40, False, "http_status: 500")
    assert [i.start for i in log.recent(T0 - 1)] == [T0 + 40, T0 + 10]  # newest first
    assert [i.target for i in log.recent(T0 - 1, target="web")] == []


def test_bounded_and_removed_targets_are_closed():
    log = IncidentLog()
    for k in range(MAX_CLOSED + 50):
        log.record("flap", T0 + 2 * k, False, "x")
        log.record("flap", T0 + 2 * k + 1, True, "")
    assert len(log.closed) == MAX_CLOSED
    log.record("gone", T0 + 5000, False, "dns: no such host")
    log.keep_only({"flap"}, T0 + 5060)
    assert not log.open
    gone = log.recent(T0 + 5000, target="gone")[0]
    assert gone.end == T0 + 5060 and gone.reason.endswith("(target removed)")


def test_saved_and_restored_through_json():
    log = IncidentLog()
    log.record("a", T0, False, "timeout: slow")
    log.record("a", T0 + 5, True, "")
    log.record("b", T0 + 7, False, "schema: column missing")
    log.record("c", T0 + 8, False, "dns: gone")
    rows = json.loads(json.dumps(log.dump()))
    again = IncidentLog()
    # "c" is no longer configured: its open incident is not reopened
    assert again.restore(rows, {"a", "b"}, T0 + 100) == 2
    assert [(i.target, i.end) for i in again.recent(T0 - 1)] == [("b", None), ("a", T0 + 5)]
    again.record("b", T0 + 120, True, "")  # the next success closes what was open at the stop
    assert again.recent(T0 - 1, target="b")[0].end == T0 + 120
    for junk in ("text", [["a"]], [[1, 2, 3, 4]], [["a", "x", None, "r"]], None):
        assert IncidentLog().restore(junk, {"a"}, T0) == 0


def test_incidents_from_prometheus_points():
    step = 60.0
    now = T0 + 3600
    series = [
        ({"target": "api", "reason": "timeout"}, [(T0 + k * step, "1") for k in range(0, 5)]),
        # after a gap, another spell of the same target with another reason, still going on
        ({"target": "api", "reason": "http_status"}, [(T0 + k * step, "1") for k in range(30, 61)]),
        ({"target": "db", "reason": "schema"}, [(T0 + 600, "1")]),
    ]
    found = from_reason_series(series, step, now)
    by = [(i.target, i.start, i.end, i.reason) for i in found]
    assert by == [("api", T0 + 1800, None, "http_status"), ("db", T0 + 600, T0 + 660, "schema"),
                  ("api", T0, T0 + 300, "timeout")]
