"""kind: json -- fields of any JSON API as metrics (json_exporter, with its users' top requests).

Every HTTP option of ``kind: http`` applies (auth, TLS, headers, method, body, size limit).
Each metric names a JSONPath; a path that selects several elements (an array, or the values of
an object) gives one series per element, labelled from fields of the element or from its map
key (``$key``).  Strings map to numbers (``value_map``), booleans to 0/1, numeric strings are
parsed.  A value that cannot be read fails the probe with reason ``extraction`` and names the
metric and path; the target's other metrics are still exported.  The number of series per
target is capped (``max_series``); past the cap the probe fails with ``too_many_series`` and
exports none of them, so memory never grows with a misbehaving API.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    model_validator,
)

from stackwatch.config import LabelName, Model, TargetConfig
from stackwatch.probes.base import (
    DynamicFamily,
    Family,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeResult,
    Reason,
    check_metric_name,
    declare_families,
    sanitize_label_value,
)
from stackwatch.probes.httpclient import HTTPClients, HTTPRequest, fetch
from stackwatch.probes.jsonquery import (
    JSONPathExpr,
    JSONPathField,
    compile_path,
    parse_json,
    to_number,
)

KEY = "$key"
"""In ``labels``: the map key (or array index) of the element, e.g. a partner id used as a key."""

_ITERATES = re.compile(r"\[\*\]|\.\*|\.\.|\[\?|\[[^\]]*[:,][^\]]*\]")




def _label_path(v: Any) -> str | JSONPathExpr:
    if v == KEY or isinstance(v, JSONPathExpr):
        return v
    return compile_path(v)


LabelPathT = Annotated[Any, PlainValidator(_label_path),
                       PlainSerializer(lambda p: p if isinstance(p, str) else p.text, return_type=str)]


class JSONMetric(Model):
    """One metric extracted from the response."""

    name: str
    """Metric name; exported as stackwatch_<namespace>_<name>."""
    help: str = ""
    type: Literal["gauge", "counter"] = "gauge"
    path: JSONPathField
    """Selects the value, or the elements to iterate over (one series each)."""
    value: JSONPathField | None = None
    """Path to the value inside each element (default: the element itself)."""
    labels: dict[LabelName, LabelPathT] = Field(default_factory=dict)
    """Label name -> path inside each element, or $key for the element's map key / index."""
    value_map: dict[str, float] = Field(default_factory=dict)
    """Strings to numbers, e.g. {healthy: 1, degraded: 0.5, down: 0}."""
    value_map_default: float | None = None
    """Number for strings not in value_map (default: such a string is an extraction error)."""
    optional: bool = False
    """A path that matches nothing is not an error (iterating paths never are)."""

    @model_validator(mode="after")
    def _check(self) -> JSONMetric:
        check_metric_name(self.name, self.type)
        return self

    def iterates(self) -> bool:
        return bool(_ITERATES.search(self.path.text))


class JSONTarget(TargetConfig, HTTPRequest):
    """A JSON API whose fields become metrics."""

    kind: Literal["json"]
    namespace: str = "json"
    """Middle part of every metric name: stackwatch_<namespace>_<name>."""
    metrics: list[JSONMetric] = Field(min_length=1)
    max_series: int = Field(1000, ge=1, le=100_000)
    """Cap on series one probe of this target may create."""

    _fams: dict[str, DynamicFamily] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _families(self) -> JSONTarget:
        self._fams = declare_families(self.namespace, [
            (m.name, m.type, m.help or f"{m.name} from the JSON API (path {m.path.text}).") for m in self.metrics])
        return self

    def family(self, m: JSONMetric) -> Family:
        return self._fams[f"stackwatch_{self.namespace}_{m.name}"]

    def declared_families(self) -> list[Family]:
        return list(self._fams.values())


ERRORS = Family("stackwatch_json_extraction_errors", "gauge",
                "Values the last probe could not read, per configured metric (see the probe's debug log).")
SERIES = Family("stackwatch_json_series", "gauge", "Series extracted by the last probe of the target.")


def extract(t: JSONTarget, doc: Any, ctx: ProbeContext) -> tuple[list[tuple[Family, dict[str, str], float]], list[str]]:
    """Every series of every metric, plus one error line per value that could not be read."""
    out: list[tuple[Family, dict[str, str], float]] = []
    errors: list[str] = []
    for m in t.metrics:
        fam = t.family(m)
        bad = 0
        matches = m.path.find_with_keys(doc)
        if not matches and not (m.optional or m.iterates()):
            errors.append(f"{m.name}: nothing at {m.path.text}")
            bad += 1
        for key, where, element in matches:
            labels: dict[str, str] = {}
            for label, lp in m.labels.items():
                if lp == KEY:
                    labels[label] = sanitize_label_value(key)
                else:
                    found = lp.find(element)
                    labels[label] = sanitize_label_value(found[0]) if found else ""
            if m.value is not None:
                values = m.value.find(element)
                if not values:
                    errors.append(f"{m.name}: nothing at {m.value.text} in {where}")
                    bad += 1
                    continue
                raw = values[0]
            else:
                raw = element
            try:
                out.append((fam, labels, to_number(raw, m.value_map, m.value_map_default)))
            except ValueError as exc:
                inner = m.value.text.removeprefix("$") if m.value else ""
                errors.append(f"{m.name} at {where}{inner}: {exc}")
                bad += 1
        ctx.sample(ERRORS, bad, metric=m.name)
    return out, errors


async def probe_json(t: JSONTarget, ctx: ProbeContext) -> ProbeResult:
    try:
        resp = await fetch(t, ctx, ctx.state)
        ctx.latency = resp.elapsed
        t.check_status(resp.status)
    except ProbeFailure as exc:
        return ctx.failure(exc.reason, exc.message)
    try:
        doc = parse_json(resp.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return ctx.failure(Reason.INVALID_JSON, f"body is not valid JSON: {exc}")

    series, errors = extract(t, doc, ctx)
    if len(series) > t.max_series:
        ctx.sample(SERIES, 0)
        return ctx.failure(Reason.TOO_MANY_SERIES,
                           f"the response gives {len(series)} series, over max_series {t.max_series}; none exported")
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for fam, labels, value in series:
        key = (fam.name, tuple(sorted(labels.items())))
        if key in seen:
            ctx.log(f"{fam.name}{dict(key[1])}: duplicate series, kept the first value")
            continue
        seen.add(key)
        ctx.sample(fam, value, **labels)
    ctx.sample(SERIES, len(seen))
    for e in errors:
        ctx.log(f"extraction error: {e}")
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return ctx.failure(Reason.EXTRACTION, "; ".join(errors[:3]) + more)
    return ctx.success()


KIND = ProbeKind(name="json", config_model=JSONTarget, probe=probe_json, state=HTTPClients)
