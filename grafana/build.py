"""Generate stackwatch's Grafana dashboards (classic JSON) with grafana-foundation-sdk.

    .venv/bin/python grafana/build.py           # write grafana/dashboards/*.json
    .venv/bin/python grafana/build.py --check   # exit 1 if the committed JSON is stale

The SDK flavour is pinned to Grafana 11.6 (pyproject's `dashboards` extra): an unpinned install
resolves to the 10.1 types.  Every threshold line comes from THRESHOLDS below, which
tests/test_dashboards.py checks against docs/THRESHOLDS.md; every panel query is executed
against a live Prometheus by the same test.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    TextBoxVariable,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimeline
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueJustifyMode,
    BigValueTextMode,
    FieldTextAlignment,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
    VisibilityMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
)

OUT = Path(__file__).resolve().parent / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RUNBOOK = "https://github.com/stackwatch/stackwatch/blob/main/docs/runbook.md"
ALERTMANAGER = "${alertmanager}/#/alerts"
"""Alertmanager's address is a dashboard variable (a text box, default http://localhost:9093)."""

# THRESHOLDS.md rows drawn as lines or colour steps (tests/test_dashboards.py checks these numbers).
THRESHOLDS = {
    "L1": 2.0,    # p95 > 2 s
    "L2": 5.0,    # p99 > 5 s
    "L3": 0.5,    # p50 goal < 500 ms
    "L4": 0.3,    # response time target < 300 ms
    "E1": 0.05,   # error rate > 5 %
    "E2": 0.01,   # error rate > 1 %
    "A1": 0.999,  # availability 99.9 %
    "D2": 0.8,    # connection use > 80 %
    "M1": 10.0,   # model counts > 10 apart
    "M3": 200.0,  # 0 <= total <= 200
    "B6": 14 * 86400.0,  # participation key expires in < 14 d: warning (< 2 d: critical, B6_CRITICAL)
    "B8": 1000.0,  # > 1,000 rounds without a vote
    "B9": 0.5,    # > 50 % of the absence window elapsed
}
B6_CRITICAL = 2 * 86400.0
BURN_RATES = (14.4, 6.0, 3.0, 1.0)  # A1's multiwindow burn-rate thresholds


JI = 'job=~"$job",instance=~"$instance",'
"""The job and instance filters, in every selector of a raw stackwatch series."""
_RECORDED = re.compile(r'(\b(?:target|target_le|target_quantile):[\w:]+)\{' + re.escape(JI))


def q(expr: str, legend: str = "", instant: bool = False, table: bool = False) -> Dataquery:
    # Recorded series (target:..., target_quantile:...) are aggregated by target across
    # exporters (replicas, shards, apps): they carry no job or instance to filter on.
    expr = _RECORDED.sub(r"\1{", expr)
    d = Dataquery().expr(expr).legend_format(legend or "__auto")
    if instant:
        d = d.instant()
    if table:
        d = d.format("table")
    return d


def steps(*values: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in values])


def runbook(alert: str) -> list[DashboardLink]:
    return [DashboardLink(f"Runbook: {alert}").type(DashboardLinkType.LINK).url(f"{RUNBOOK}#{alert.lower()}")
            .target_blank(True), DashboardLink("Firing alerts").type(DashboardLinkType.LINK).url(ALERTMANAGER)
            .target_blank(True)]


def ts(title: str, description: str, unit: str, *targets: Dataquery, lines: ThresholdsConfig | None = None,
       alert: str | None = None, span: int = 12) -> Timeseries:
    p = Timeseries().title(title).description(description).datasource(DS).unit(unit).height(8).span(span) \
        .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                .show_legend(True).calcs([])) \
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    for i, t in enumerate(targets):
        p = p.with_target(t.ref_id(chr(65 + i)))
    if lines is not None:
        p = p.thresholds(lines).thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
    if alert:
        p = p.links(runbook(alert))
    return p


def stat(title: str, description: str, unit: str, target: Dataquery, colours: ThresholdsConfig,
         alert: str | None = None, span: int = 6, mappings: list | None = None) -> Stat:
    p = Stat().title(title).description(description).datasource(DS).unit(unit).height(4).span(span) \
        .with_target(target.ref_id("A")).thresholds(colours) \
        .graph_mode(BigValueGraphMode.NONE).color_mode(BigValueColorMode.VALUE) \
        .justify_mode(BigValueJustifyMode.AUTO).text_mode(BigValueTextMode.AUTO).orientation(VizOrientation.AUTO) \
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields("")) \
        .wide_layout(True).show_percent_change(False)
    if mappings:
        p = p.mappings(mappings)
    if alert:
        p = p.links(runbook(alert))
    return p


def table(title: str, description: str, unit: str, *targets: Dataquery, transformations: list | None = None,
          alert: str | None = None, span: int = 12,
          overrides: list[tuple[str, list[tuple[str, object]]]] | None = None) -> Table:
    p = Table().title(title).description(description).datasource(DS).unit(unit).height(8).span(span) \
        .show_header(True).frame_index(0).align(FieldTextAlignment.AUTO).inspect(False)
    for i, t in enumerate(targets):
        p = p.with_target(t.ref_id(chr(65 + i)))
    for tr in transformations or []:
        p = p.with_transformation(tr)
    for field_name, props in overrides or []:
        p = p.override_by_name(field_name, [DynamicConfigValue(id_val=k, value=v) for k, v in props])
    if alert:
        p = p.links(runbook(alert))
    return p


def timeline(title: str, description: str, target: Dataquery, mappings: list, span: int = 24) -> StateTimeline:
    return (StateTimeline().title(title).description(description).datasource(DS).unit("short").height(8).span(span)
            .with_target(target.ref_id("A")).mappings(mappings).show_value(VisibilityMode.NEVER)
            .merge_values(True).row_height(0.9).fill_opacity(80).line_width(0)
            .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                    .show_legend(True).calcs([]))
            .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.SINGLE).sort(SortOrder.NONE))
            .thresholds(steps((None, "red"), (1, "green"))))


def _targets_of(metric: str) -> str:
    """The target variable's query: a recorded series has no job or instance to filter by."""
    if metric.startswith("target"):
        return f"label_values({metric}, target)"
    return f"label_values({metric}{{{JI.rstrip(',')}}}, target)"


def base(uid: str, title: str, description: str, target_query: str = "stackwatch_probe_success") -> Dashboard:
    return (
        Dashboard(title).uid(uid).description(description).tags(["stackwatch"]).refresh("30s").time("now-3h", "now")
        .readonly()
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(QueryVariable("job").label("Job").datasource(DS)
                       .query("label_values(stackwatch_build_info, job)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                       .multi(True).include_all(True).all_value(".*"))
        .with_variable(QueryVariable("instance").label("Instance").datasource(DS)
                       .query('label_values(stackwatch_build_info{job=~"$job"}, instance)')
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))
        .with_variable(QueryVariable("target").label("Target").datasource(DS)
                       .query(_targets_of(target_query))
                       .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*"))
        .with_variable(TextBoxVariable("alertmanager").label("Alertmanager URL")
                       .default_value("http://localhost:9093")
                       .current(VariableOption(selected=True, text="http://localhost:9093", value="http://localhost:9093")))
        .link(DashboardLink("stackwatch dashboards").type(DashboardLinkType.DASHBOARDS).tags(["stackwatch"])
              .as_dropdown(True))
        .link(DashboardLink("Alertmanager").type(DashboardLinkType.LINK).url(ALERTMANAGER).target_blank(True))
    )


T = JI + 'target=~"$target"'
UP_DOWN = [ValueMap(options={"0": ValueMappingResult(text="down", color="red", index=0),
                             "1": ValueMappingResult(text="up", color="green", index=1)})]
YES_NO = [ValueMap(options={"0": ValueMappingResult(text="no", color="red", index=0),
                            "1": ValueMappingResult(text="yes", color="green", index=1)})]
RED_GREEN = steps((None, "green"), (1, "red"))


def overview() -> Dashboard:
    return (
        base("stackwatch-overview", "stackwatch / Platform overview",
             "Every watched target, up or down and why, and which service has which feature.")
        .with_row(Row("Targets"))
        .with_panel(stat("Targets up", "Targets whose last probe succeeded.", "short",
                         q(f"count(stackwatch_probe_success{{{T}}} == 1)", instant=True), steps((None, "green"))))
        .with_panel(stat("Targets down", "Targets whose last probe failed.", "short",
                         q(f"count(stackwatch_probe_success{{{T}}} == 0) or vector(0)", instant=True), RED_GREEN,
                         alert="StackwatchTargetDown"))
        .with_panel(stat("Firing alerts", "Alerts firing now (Prometheus ALERTS).", "short",
                         q('count(ALERTS{alertstate="firing",alertname!="StackwatchWatchdog"}) or vector(0)', instant=True),
                         RED_GREEN))
        .with_panel(stat("Exporter up", "1 if Prometheus scrapes stackwatch.", "short",
                         q('min(up{job=~"$job",instance=~"$instance"})', instant=True), steps((None, "red"), (1, "green")),
                         alert="StackwatchExporterDown", mappings=UP_DOWN))
        .with_panel(table("Status of every target", "Each target's state (up or down, coloured), why it fails, "
                          "its last probe's duration and its uptime over the selected time range; the target "
                          "name links to the services dashboard for it.", "short",
                          q(f"stackwatch_probe_success{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_probe_failure_reason{{{T}}} == 1", instant=True, table=True),
                          q(f"stackwatch_probe_last_duration_seconds{{{T}}}", instant=True, table=True),
                          q(f"avg_over_time(stackwatch_probe_success{{{T}}}[$__range])", instant=True, table=True),
                          transformations=[
                              DataTransformerConfig(id_val="merge", options={}),
                              DataTransformerConfig(id_val="organize", options={
                                  "excludeByName": {"Time": True, "__name__": True, "job": True, "Value #B": True},
                                  "renameByName": {"Value #A": "State", "reason": "Reason",
                                                   "Value #C": "Last probe", "Value #D": "Uptime"}})],
                          overrides=[("State", [("mappings", UP_DOWN), ("custom.cellOptions", {"type": "color-text"})]),
                                     ("Last probe", [("unit", "s")]),
                                     ("Uptime", [("unit", "percentunit"), ("decimals", 3)]),
                                     ("target", [("links", [{"title": "RED of ${__value.text}", "url":
                                                 "/d/stackwatch-red?var-target=${__value.text}&${__url_time_range}"
                                                 "&var-datasource=${datasource}"}])])],
                          alert="StackwatchTargetDown", span=24))
        .with_panel(timeline("State over time", "Up or down at every moment of the selected range, per target.",
                             q(f"stackwatch_probe_success{{{T}}}", "{{target}}"), UP_DOWN))
        .with_row(Row("Integration matrix"))
        .with_panel(table("Features by service", "Features each service reports in its health JSON "
                          "(the `info: {feature: ...}` of its http target): feature x service.", "short",
                          q(f'stackwatch_http_body_info{{key="feature",{T}}}', instant=True, table=True),
                          transformations=[DataTransformerConfig(id_val="groupingToMatrix", options={
                              "columnField": "target", "rowField": "value", "valueField": "Value"})], span=12))
        .with_panel(table("Versions", "Versions services report (info: {version: ...}).", "short",
                          q(f'stackwatch_http_body_info{{key="version",{T}}}', instant=True, table=True), span=12))
        .with_row(Row("Scheduled jobs (heartbeats)"))
        .with_panel(ts("Time since each job's last success", "Seconds since each heartbeat check's job last "
                       "reported success; the saw-tooth of a job on schedule, a climbing line for one that stopped.",
                       "s", q(f"time() - stackwatch_heartbeat_last_success_timestamp_seconds{{{T}}}", "{{target}}"),
                       alert="StackwatchHeartbeatMissed", span=12))
        .with_panel(table("Jobs overdue or failing", "Heartbeat checks past their due time and grace (missed), "
                          "whose last run failed, or running too long.", "short",
                          q(f'stackwatch_probe_failure_reason{{kind="heartbeat",{T}}} == 1', instant=True, table=True),
                          alert="StackwatchHeartbeatMissed", span=12))
    )


def red() -> Dashboard:
    lat = steps((None, "green"), (THRESHOLDS["L4"], "green"), (THRESHOLDS["L3"], "yellow"), (THRESHOLDS["L1"], "orange"),
                (THRESHOLDS["L2"], "red"))
    return (
        base("stackwatch-red", "stackwatch / Services (RED)",
             "Rate, errors and duration per target, from stackwatch's probes and from instrumented apps.",
             "target:requests:rate5m")
        .with_row(Row("Rate and errors"))
        .with_panel(ts("Requests per second", "Probes per second (source=probe) or app requests per second "
                       "(source=app).", "reqps", q(f"target:requests:rate5m{{{T}}}", "{{target}} ({{source}})"), span=8))
        .with_panel(ts("Error ratio", "Failed requests / all requests over 5m; lines at 1 % (E2) and 5 % (E1).",
                       "percentunit", q(f"target:request_errors_per_requests:ratio_rate5m{{{T}}}", "{{target}} ({{source}})"),
                       lines=steps((None, "green"), (THRESHOLDS["E2"], "orange"), (THRESHOLDS["E1"], "red")),
                       alert="StackwatchErrorRateCritical", span=8))
        .with_panel(ts("Failed probes by reason", "Why probes fail, per target.", "short",
                       q(f"sum by (target, reason) (increase(stackwatch_probe_failures_total{{{T}}}[$__rate_interval]))",
                         "{{target}}: {{reason}}"), span=8))
        .with_row(Row("Duration"))
        .with_panel(ts("p50 / p95 / p99 latency", "Latency quantiles over 5m; lines at the 300 ms target (L4), "
                       "500 ms p50 goal (L3), 2 s p95 alert (L1) and 5 s p99 alert (L2).", "s",
                       q(f"target_quantile:request_duration_seconds:quantile5m{{{T}}}",
                         "{{target}} p{{quantile}}"), lines=lat, alert="StackwatchHighResponseTime", span=12))
        .with_panel(ts("HTTP phases", "Where the last probe's time went: connect, TLS, processing, transfer.", "s",
                       q(f"stackwatch_http_phase_duration_seconds{{{T}}}", "{{target}} {{phase}}"), span=12))
        .with_panel(ts("HTTP status code", "Status code of the last response (0: no response).", "none",
                       q(f"stackwatch_http_status_code{{{T}}}", "{{target}}"), span=12))
        .with_panel(ts("TLS certificate expiry", "Days until the leaf certificate expires.", "d",
                       q(f"(stackwatch_http_tls_cert_expiry_timestamp_seconds{{{T}}} - time()) / 86400", "{{target}}"),
                       alert="StackwatchTLSCertificateExpiring", span=12))
        .with_row(Row("Per target"))
        .with_panel(table("Target details", "Per probed target: uptime over the selected range, the last HTTP "
                          "status code, the TLS version and the time left on the certificate, and why it fails now.",
                          "short",
                          q(f"avg_over_time(stackwatch_probe_success{{{T}}}[$__range])", instant=True, table=True),
                          q(f"stackwatch_http_status_code{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_http_tls_version_info{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_http_tls_cert_expiry_timestamp_seconds{{{T}}} - time()", instant=True,
                            table=True),
                          q(f"stackwatch_probe_failure_reason{{{T}}} == 1", instant=True, table=True),
                          transformations=[
                              DataTransformerConfig(id_val="merge", options={}),
                              DataTransformerConfig(id_val="organize", options={
                                  "excludeByName": {"Time": True, "__name__": True, "job": True, "kind": True,
                                                    "Value #C": True, "Value #E": True},
                                  "renameByName": {"Value #A": "Uptime", "Value #B": "Status code",
                                                   "version": "TLS", "Value #D": "Certificate expires in",
                                                   "reason": "Failing because"}})],
                          overrides=[("Uptime", [("unit", "percentunit"), ("decimals", 3)]),
                                     ("Status code", [("unit", "none")]),
                                     ("Certificate expires in", [("unit", "dtdurations")])],
                          alert="StackwatchTargetDown", span=24))
    )


def slo() -> Dashboard:
    burn = steps((None, "green"), *((r, c) for r, c in zip(sorted(BURN_RATES), ("yellow", "orange", "red", "dark-red"))))
    return (
        base("stackwatch-slo", "stackwatch / SLO 99.9 %",
             "Availability against the 99.9 % monthly objective (43.2 min of errors per 30 days).",
             "target:requests:rate5m")
        .with_row(Row("Objective"))
        .with_panel(stat("Availability, 30 days", "1 - error ratio over 30 days; green at 99.9 % (A1).", "percentunit",
                         q(f"1 - target:slo_errors_per_requests:ratio_rate30d{{{T}}}", "{{target}}", instant=True),
                         steps((None, "red"), (THRESHOLDS["A1"], "green")), span=12))
        .with_panel(stat("Error budget remaining", "Share of the 30-day budget (0.1 % of requests) not yet spent.",
                         "percentunit", q(f"target:slo_error_budget_remaining:ratio30d{{{T}}}", "{{target}}", instant=True),
                         steps((None, "red"), (0, "orange"), (0.5, "green")), alert="StackwatchErrorBudgetBurn", span=12))
        .with_row(Row("Burn"))
        .with_panel(ts("Burn rate, 1 hour", "Error ratio / 0.001; lines at the 1x, 3x, 6x and 14.4x alert rates.", "none",
                       q(f"target:slo_burn_rate:ratio_rate1h{{{T}}}", "{{target}}"), lines=burn,
                       alert="StackwatchErrorBudgetBurn"))
        .with_panel(ts("SLI error ratio by window", "The windows the burn-rate alerts pair: 5m, 30m, 1h, 6h.",
                       "percentunit",
                       *(q(f"target:slo_errors_per_requests:ratio_rate{w}{{{T}}}", "{{target}} " + w)
                         for w in ("5m", "30m", "1h", "6h"))))
    )


def databases() -> Dashboard:
    return (
        base("stackwatch-databases", "stackwatch / Databases",
             "Reachability, schema, migrations and connection saturation of every kind: sql target.",
             "stackwatch_sql_configured")
        .with_row(Row("Reachability"))
        .with_panel(table("Databases", "Configured (0: empty URL), up, server version.", "short",
                          q(f"stackwatch_sql_configured{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_sql_up{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_sql_server_info{{{T}}}", instant=True, table=True),
                          transformations=[DataTransformerConfig(id_val="merge", options={})],
                          alert="StackwatchDatabaseDown", span=12))
        .with_panel(ts("Connect and ping time", "Time to get a connection, and of SELECT 1.", "s",
                       q(f"stackwatch_sql_connect_duration_seconds{{{T}}}", "{{target}} connect"),
                       q(f"stackwatch_sql_ping_duration_seconds{{{T}}}", "{{target}} ping"), span=12))
        .with_row(Row("Saturation and schema"))
        .with_panel(ts("Server connections used", "Connections in use / usable maximum; line at 80 % (D2).",
                       "percentunit", q(f"stackwatch_sql_server_connections_utilization_ratio{{{T}}}", "{{target}}"),
                       lines=steps((None, "green"), (THRESHOLDS["D2"], "red")),
                       alert="StackwatchDatabaseConnectionPoolExhausted", span=12))
        .with_panel(table("Missing schema objects", "Expected tables and columns that are missing, or columns of "
                          "another type (D3).", "short",
                          q(f"stackwatch_sql_schema_table_present{{{T}}} == 0", instant=True, table=True),
                          q(f"stackwatch_sql_schema_column_present{{{T}}} == 0", instant=True, table=True),
                          alert="StackwatchDatabaseSchemaMissing", span=12))
        .with_panel(ts("Custom query durations", "Duration of each custom query's last run.", "s",
                       q(f"stackwatch_sql_query_duration_seconds{{{T}}}", "{{target}} {{query}}"), span=12))
        .with_panel(table("Migrations", "Alembic revision and whether it is the expected head.", "short",
                          q(f"stackwatch_sql_migration_at_expected_head{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_sql_migration_revision_info{{{T}}}", instant=True, table=True),
                          alert="StackwatchDatabaseMigrationMismatch", span=12))
    )


def algorand() -> Dashboard:
    return (
        base("stackwatch-algorand", "stackwatch / Algorand",
             "Node sync, network, fee headroom, assets, transactions and consensus participation.", "stackwatch_algorand_node_healthy")
        .with_row(Row("Node"))
        .with_panel(stat("Node ready", "1 if /ready answered 200.", "short",
                         q(f"stackwatch_algorand_node_ready{{{T}}}", "{{target}}", instant=True),
                         steps((None, "red"), (1, "green")), alert="StackwatchAlgorandNodeNotSynced", mappings=YES_NO))
        .with_panel(stat("Network match", "1 if the node is on the configured network.", "short",
                         q(f"stackwatch_algorand_network_match{{{T}}}", "{{target}}", instant=True),
                         steps((None, "red"), (1, "green")), alert="StackwatchAlgorandWrongNetwork", mappings=YES_NO))
        .with_panel(ts("Time since last round", "Seconds since the node's last round; stalled above 60 s (B4).", "s",
                       q(f"stackwatch_algorand_time_since_last_round_seconds{{{T}}}", "{{target}}"),
                       lines=steps((None, "green"), (60, "red")), span=12))
        .with_row(Row("Accounts and assets"))
        .with_panel(ts("Balance", "Account balance and floor, in ALGO (microAlgos / 1e6).", "suffix: ALGO",
                       q(f"stackwatch_algorand_account_balance_microalgos{{{T}}} / 1e6", "{{target}} {{account}}"),
                       q(f"stackwatch_algorand_account_floor_microalgos{{{T}}} / 1e6", "{{target}} {{account}} floor"),
                       alert="StackwatchAlgorandAccountUnderfunded", span=12))
        .with_panel(stat("Fee headroom", "Minimum-fee transactions the spendable balance can pay (0: none, B2).",
                         "short", q(f"stackwatch_algorand_account_fee_headroom_transactions{{{T}}}", "{{account}}",
                                    instant=True), steps((None, "red"), (1, "orange"), (100, "green")),
                         alert="StackwatchAlgorandAccountUnderfunded"))
        .with_panel(stat("Assets found", "1 if the asset exists on the node's network (0: B1).", "short",
                         q(f"stackwatch_algorand_asset_exists{{{T}}}", "{{asset}}", instant=True),
                         steps((None, "red"), (1, "green")), alert="StackwatchAlgorandAssetMissing", mappings=YES_NO))
        .with_panel(table("Transactions", "State of each watched transaction.", "short",
                          q(f"stackwatch_algorand_transaction_state{{{T}}} == 1", instant=True, table=True),
                          alert="StackwatchAlgorandTransactionNotConfirmed", span=24))
        .with_row(Row("Consensus participation"))
        .with_panel(ts("Participation key expires in", "Time until each participating account's registered key "
                       "expires (rounds x measured round time); warning under 14 d, critical under 2 d (B6).", "s",
                       q(f"stackwatch_algorand_participation_key_expires_in_seconds{{{T}}}", "{{target}} {{account}}"),
                       lines=steps((None, "red"), (B6_CRITICAL, "orange"), (THRESHOLDS["B6"], "green")),
                       alert="StackwatchAlgorandParticipationKeyExpiring", span=12))
        .with_panel(ts("Absence window used", "Share of the absence window elapsed since the account last proposed "
                       "or sent a heartbeat; suspension risk past 50 % (B9).", "percentunit",
                       q(f"stackwatch_algorand_participation_absence_elapsed_ratio{{{T}}}", "{{target}} {{account}}"),
                       lines=steps((None, "green"), (THRESHOLDS["B9"], "orange")),
                       alert="StackwatchAlgorandSuspensionRisk", span=12))
        .with_panel(stat("Online with a key on the node", "1 if the account is online and the node holds its "
                         "registered key for the current round (B7, B9).", "short",
                         q(f"min by (target, account) (stackwatch_algorand_account_online{{{T}}})", "{{account}}",
                           instant=True), steps((None, "red"), (1, "green")),
                         alert="StackwatchAlgorandAccountSuspended", mappings=YES_NO))
        .with_panel(ts("Rounds since last vote", "Rounds since the node's key for the account last voted; "
                       "not voting past 1,000 (B8).", "short",
                       q(f"stackwatch_algorand_participation_rounds_since_last_vote{{{T}}}", "{{target}} {{account}}"),
                       lines=steps((None, "green"), (THRESHOLDS["B8"], "orange")), alert="StackwatchAlgorandNotVoting"))
        .with_panel(stat("Protocol upgrade in", "Time until a scheduled protocol upgrade; the linked alert pages when "
                         "this node's algod does not support it (B5).", "s",
                         q(f"stackwatch_algorand_upgrade_in_seconds{{{T}}}", "{{target}}", instant=True),
                         steps((None, "orange")), alert="StackwatchAlgorandUpgradeUnsupported"))
        .with_panel(stat("Round time", "Average seconds per round over the last 1,000 rounds, from block "
                         "timestamps (used for the seconds above).", "s",
                         q(f"stackwatch_algorand_round_duration_seconds{{{T}}}", "{{target}}", instant=True),
                         steps((None, "green"))))
    )


def consistency() -> Dashboard:
    return (
        base("stackwatch-consistency", "stackwatch / Consistency (model counts)",
             "The same counts from several sources, compared.", "stackwatch_consistency_agreement")
        .with_row(Row("Values"))
        .with_panel(ts("Values by source", "Each field as each source reports it; a line at the 200 plausibility "
                       "limit (M3).", "short", q(f"stackwatch_consistency_value{{{T}}}", "{{source}} {{field}}"),
                       lines=steps((None, "green"), (THRESHOLDS["M3"], "red")), span=12))
        .with_panel(ts("Spread across sources", "max - min per field; line at 10 models apart (M1).", "short",
                       q(f"stackwatch_consistency_spread{{{T}}}", "{{target}} {{field}}"),
                       lines=steps((None, "green"), (THRESHOLDS["M1"], "orange")),
                       alert="StackwatchSourcesDisagree", span=12))
        .with_row(Row("Sources"))
        .with_panel(table("Sources", "Priority, whether it could be read, and which one the app serves (M6).",
                          "short", q(f"stackwatch_consistency_source_priority{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_consistency_source_success{{{T}}}", instant=True, table=True),
                          q(f"stackwatch_consistency_source_served{{{T}}}", instant=True, table=True),
                          transformations=[DataTransformerConfig(id_val="merge", options={})], span=12))
        .with_panel(table("Invariant violations", "Sources reporting impossible numbers (M3, M4).", "short",
                          q(f"stackwatch_consistency_invariant_violated{{{T}}} == 1", instant=True, table=True),
                          alert="StackwatchInvariantViolated", span=12))
        .with_panel(ts("Age of each value", "Time since the value last changed; a source stuck on a fallback grows "
                       "while the others reset (M5).", "s",
                       q(f"time() - stackwatch_consistency_value_last_change_timestamp_seconds{{{T}}}",
                         "{{source}} {{field}}"), alert="StackwatchSourceStuck", span=24))
    )


DASHBOARDS = {"overview": overview, "red": red, "slo": slo, "databases": databases, "algorand": algorand,
              "consistency": consistency}


def render() -> dict[str, str]:
    return {f"stackwatch-{name}.json": JSONEncoder(sort_keys=True, indent=2).encode(fn().build()) + "\n"
            for name, fn in DASHBOARDS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args()
    files = render()
    if args.check:
        stale = [n for n, text in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        extra = [p.name for p in OUT.glob("*.json") if p.name not in files]
        if stale or extra:
            print(f"stale: {stale}, not generated: {extra}; run python grafana/build.py", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        json.loads(text)
    print(f"wrote {len(files)} dashboards to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
