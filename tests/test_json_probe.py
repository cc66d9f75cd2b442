"""kind: json against real local servers serving the seed 001 energy overview and the seed 002 AI-GO stats."""

from __future__ import annotations

import pytest
from probing import close_clients, run_probe
from stackwatch.series import render_result
from stackwatch.config import ConfigError
from stackwatch.kinds import parse_config
from expo import find, value as metric

ENERGY = """
    namespace: energy
    metrics:
      - name: pool_level_percent
        help: Energy pool fill level per partner.
        path: $.partners[*]
        value: $.level_percent
        labels: {partner_id: $.partner_id, partner: $.name}
      - name: unacknowledged_alerts
        path: $.partners[*]
        value: $.unacknowledged_alerts
        labels: {partner_id: $.partner_id}
      - name: pool_status
        help: 1 normal, 0.5 low, 0 empty.
        path: $.partners[*]
        value: $.status
        labels: {partner_id: $.partner_id}
        value_map: {normal: 1, low: 0.5, empty: 0}
      - name: auto_refill
        path: $.partners[*]
        value: $.auto_refill
        labels: {partner_id: $.partner_id}
      - name: region_level_percent
        path: $.pools_by_region.*
        value: $.level_percent
        labels: {region: $key}
      - name: blockchain_synced
        path: $.blockchain.synced
      - name: last_sync_block
        path: $.blockchain.last_sync_block
"""


def target(servers, body: str, **fields):
    head = "targets:\n  - name: t\n    kind: json\n"
    fields.setdefault("timeout", "1s")
    for k, v in fields.items():
        head += f"    {k}: {v}\n"
    return parse_config(head + body).targets[0]


async def probe(t):
    try:
        r = await run_probe(t)
    finally:
        await close_clients()
    return r, "".join(render_result(t, r).values())


async def test_energy_overview_nested_arrays_map_keys_enums_booleans(servers):
    r, text = await probe(target(servers, ENERGY, url=servers.url("/api/v1/energy/overview")))
    assert r.success, r.message
    lab = 'target="t",kind="json"'
    for line in (
        f'stackwatch_energy_pool_level_percent{{{lab},partner_id="P-001",partner="Green Farm"}} 82',
        f'stackwatch_energy_pool_level_percent{{{lab},partner_id="P-002",partner="Sun?Coop"}} 12.5',  # BEL sanitised
        f'stackwatch_energy_unacknowledged_alerts{{{lab},partner_id="P-002"}} 3',
        f'stackwatch_energy_pool_status{{{lab},partner_id="P-001"}} 1',
        f'stackwatch_energy_pool_status{{{lab},partner_id="P-002"}} 0.5',
        f'stackwatch_energy_auto_refill{{{lab},partner_id="P-002"}} 0',
        f'stackwatch_energy_region_level_percent{{{lab},region="seoul"}} 70.1',  # numeric string parsed
        f'stackwatch_energy_region_level_percent{{{lab},region="busan"}} 35',
        f'stackwatch_energy_blockchain_synced{{{lab}}} 1',
        f'stackwatch_energy_last_sync_block{{{lab}}} 48211093',
        f'stackwatch_json_series{{{lab}}} 12',
    ):
        assert line + "\n" in text, line
    assert "# " not in text  # HELP/TYPE are written by /metrics, once per family


async def test_ai_go_stats(servers):
    body = "    namespace: aigo\n    metrics:\n" + "".join(
        f"      - {{name: {snake}, path: $.{camel}}}\n" for snake, camel in
        [("models_total_reported", "totalModels"), ("models_active", "activeModels"),
         ("availability_percent", "avgAvailability")])
    r, text = await probe(target(servers, body, url=servers.url("/ai-go/realtime-stats")))
    assert r.success
    assert metric(text, "stackwatch_aigo_models_active", target="t", kind="json") == 51
    assert metric(text, "stackwatch_aigo_availability_percent", target="t", kind="json") == 96.9


async def test_missing_field_and_wrong_type_are_reported_and_others_still_exported(servers):
    body = """    metrics:
      - {name: models_active, path: $.activeModels}
      - {name: models_missing, path: $.noSuchField}
      - {name: status, path: "$.partners[*]", value: $.status, labels: {partner_id: $.partner_id}}
"""
    r, text = await probe(target(servers, body.replace("$.activeModels", "$.total_partners"),
                                 url=servers.url("/api/v1/energy/overview")))
    assert (r.success, r.reason.value) == (False, "extraction")
    assert r.message == ('models_missing: nothing at $.noSuchField; status at $.partners[0].status: '
                         'expected a number, got "normal"; status at $.partners[1].status: expected a number, got "low"')
    assert metric(text, "stackwatch_json_models_active", target="t", kind="json") == 2
    assert metric(text, "stackwatch_json_extraction_errors", target="t", kind="json", metric="status") == 2
    assert metric(text, "stackwatch_json_extraction_errors", target="t", kind="json", metric="models_active") == 0


async def test_value_map_default_for_unknown_strings(servers):
    body = """    metrics:
      - {name: status, path: "$.partners[*]", value: $.status, labels: {partner_id: $.partner_id},
         value_map: {normal: 1}, value_map_default: -1}
"""
    r, text = await probe(target(servers, body, url=servers.url("/api/v1/energy/overview")))
    assert r.success
    assert metric(text, "stackwatch_json_status", target="t", kind="json", partner_id="P-002") == -1


async def test_object_value_is_a_wrong_type(servers):
    r, _ = await probe(target(servers, "    metrics: [{name: chain, path: $.blockchain}]\n",
                              url=servers.url("/api/v1/energy/overview")))
    assert (r.reason.value, r.message) == ("extraction", "chain at $.blockchain: expected a number, got an object")


async def test_series_cap(servers):
    body = "    max_series: 1000\n    metrics: [{name: v, path: '$.items[*]', value: $.v, labels: {id: $.id}}]\n"
    r, text = await probe(target(servers, body, url=servers.url("/many?n=1500")))
    assert (r.success, r.reason.value) == (False, "too_many_series")
    assert r.message == "the response gives 1500 series, over max_series 1000; none exported"
    assert not find(text, "stackwatch_json_v")
    r, _ = await probe(target(servers, body, url=servers.url("/many?n=1000")))
    assert r.success


@pytest.mark.parametrize("path,fields,reason", [
    ("/invalid-json", {}, "invalid_json"),
    ("/500", {}, "http_status"),
    ("/slow", {"timeout": "300ms"}, "timeout"),
])
async def test_fetch_failures_give_success_0_with_reason(servers, path, fields, reason):
    r, text = await probe(target(servers, "    metrics: [{name: x, path: $.x}]\n", url=servers.url(path), **fields))
    assert (r.success, r.reason.value) == (False, reason)
    assert metric(text, "stackwatch_probe_success", target="t", kind="json") == 0


@pytest.mark.parametrize("metric,error", [
    ("{name: bad-name, path: $.x}", 'metric name "bad-name" must match [a-zA-Z_][a-zA-Z0-9_]*'),
    ("{name: hits, type: counter, path: $.x}", 'counter "hits" must end in _total (Prometheus naming)'),
    ("{name: x, path: status}", 'expected a JSON path starting with $, like $.status, got "status"'),
    ("{name: x, path: $.x, labels: {target: $.y}}", 'label name "target" is reserved for stackwatch\'s own labels'),
])
def test_metric_config_errors(metric, error):
    with pytest.raises(ConfigError) as info:
        parse_config(f"targets:\n  - {{name: t, kind: json, url: 'http://x/', metrics: [{metric}]}}\n")
    assert [p.message for p in info.value.problems] == [error]
