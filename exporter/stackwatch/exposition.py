"""Prometheus text (0.0.4) and OpenMetrics 1.0: the primitives stackwatch renders lines with
(escaping, number and bucket-bound format, one line, a family header) and content negotiation.

Negotiation: Prometheus text 0.0.4 or OpenMetrics 1.0.0 by the Accept header's q-values, with
the ``escaping=`` parameter Prometheus 3 sends honoured (every name stackwatch writes is a legacy
name, so each escaping scheme gives the same bytes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

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


ESCAPING_SCHEMES = ("allow-utf-8", "underscores", "dots", "values")


@dataclass(frozen=True, slots=True)
class Format:
    openmetrics: bool
    escaping: str | None = None

    @property
    def content_type(self) -> str:
        base = OPENMETRICS_CONTENT_TYPE if self.openmetrics else TEXT_CONTENT_TYPE
        return f"{base}; escaping={self.escaping}" if self.escaping else base


def negotiate(accept: str) -> Format:
    """The exposition format for an Accept header: the acceptable one with the highest q
    (OpenMetrics on a tie, as client_golang does); text 0.0.4 when nothing else matches."""
    best: tuple[float, int, Format] | None = None
    for position, item in enumerate(accept.split(",")[:32]):
        media, *params = (p.strip() for p in item.split(";"))
        opts: dict[str, str] = {}
        for p in params:
            k, _, v = p.partition("=")
            opts[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(opts.get("q", "1"))
        except ValueError:
            continue
        if q <= 0:
            continue
        media = media.lower()
        escaping = opts.get("escaping")
        escaping = escaping if escaping in ESCAPING_SCHEMES else None
        if media == "application/openmetrics-text" and opts.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
            fmt, pref = Format(True, escaping), 1
        elif media == "text/plain" and opts.get("version", "0.0.4") == "0.0.4":
            fmt, pref = Format(False, escaping), 0
        elif media in ("*/*", "text/*"):
            fmt, pref = Format(False), 0
        else:
            continue
        rank = (q, pref, fmt)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return best[2] if best is not None else Format(False)
