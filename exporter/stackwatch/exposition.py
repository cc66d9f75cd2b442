"""Prometheus text (0.0.4) and OpenMetrics 1.0 primitives, by hand, for per-target series.

prometheus_client's generate_latest costs 4-8 us per sample; rendering our own lines once per
probe result and joining them per scrape costs ~0.2 us per sample (measured, see bench/).
The output is checked by ``promtool check metrics`` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def fmt_value(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def fmt_le(v: float) -> str:
    """Bucket bounds in canonical float form ("0.5", "1.0", "+Inf"), as client_python writes them."""
    if math.isinf(v):
        return "+Inf"
    return repr(float(v))


def render_labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)


def line(name: str, labels: str, value: float) -> str:
    if labels:
        return f"{name}{{{labels}}} {fmt_value(value)}\n"
    return f"{name} {fmt_value(value)}\n"


def header(name: str, mtype: str, help_text: str, openmetrics: bool) -> str:
    # OpenMetrics names a counter family without its _total suffix.
    family = name[: -len("_total")] if openmetrics and mtype == "counter" and name.endswith("_total") else name
    return f"# HELP {family} {escape_help(help_text)}\n# TYPE {family} {mtype}\n"

