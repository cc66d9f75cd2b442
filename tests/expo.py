"""Exposition read as samples: tests look values up by name and labels through prometheus_client's
parser, never by substring (a ``# HELP`` line can contain any text a substring check looks for)."""

from __future__ import annotations

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]
"""Parsed samples by sample name: what :func:`parse` gives, for many look-ups in one body."""


def samples(text: str | bytes) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a text (0.0.4) or OpenMetrics body: (name, labels, value)."""
    if isinstance(text, bytes):
        text = text.decode()
    read = om_families if text.rstrip().endswith("# EOF") else text_string_to_metric_families
    return [(s.name, dict(s.labels), s.value) for fam in read(text) for s in fam.samples]


def parse(text: str | bytes) -> Samples:
    """A body parsed once, indexed by sample name (pass it to find/value instead of the text)."""
    out: Samples = {}
    for name, labels, v in samples(text):
        out.setdefault(name, []).append((labels, v))
    return out


def find(text: str | bytes | Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples named ``name`` whose labels include ``labels``."""
    index = text if isinstance(text, dict) else parse(text)
    return [(lab, v) for lab, v in index.get(name, ()) if all(lab.get(k) == w for k, w in labels.items())]


def value(text: str | bytes | Samples, name: str, **labels: str) -> float | None:
    """The one sample named ``name`` with these labels (others may exist): its value, or None when
    there is none.  More than one match is the test's mistake, and fails."""
    found = find(text, name, **labels)
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples: {found}"
    return found[0][1] if found else None
