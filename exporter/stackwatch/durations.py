"""Prometheus-style durations ("500ms", "15s", "1m30s") and byte sizes ("1MiB")."""

from __future__ import annotations

import re

from stackwatch.redact import EnvStr

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_ORDER = ("y", "w", "d", "h", "m", "s", "ms")

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)


MAX_DURATION = 10 * 365 * 86400.0
"""Ten years: longer than any interval, timeout or retention a config could mean."""
MAX_SIZE = 1 << 40
"""One TiB."""
_MAX_TEXT = 64


def parse_duration(value: object) -> float:
    """Return seconds for a Prometheus duration string; raise ValueError naming what was expected."""
    if isinstance(value, str) and len(value) <= _MAX_TEXT:
        m = _DURATION.match(value.strip())
        if m and value.strip() and any(m.groups()):
            if any(g and len(g) > 12 for g in m.groups()):
                raise ValueError(f"duration {_show(value)} is out of range (at most 10y)")
            seconds = sum(int(g) * _UNITS[u] for g, u in zip(m.groups(), _ORDER) if g)
            if seconds > MAX_DURATION:
                raise ValueError(f"duration {_show(value)} is out of range (at most 10y)")
            return seconds
    raise ValueError(f"expected a duration like 5s, got {_show(value)}")


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for display: 90.0 -> "1m30s", 0.5 -> "500ms"."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit in _ORDER:
        size = round(_UNITS[unit] * 1000)
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


def parse_size(value: object) -> int:
    """Bytes for "1MiB", "512KiB", "1000" or an integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if value > MAX_SIZE:
            raise ValueError(f"size {_show(value)} is out of range (at most 1TiB)")
        return value
    if isinstance(value, str) and len(value) <= _MAX_TEXT:
        m = _SIZE.match(value)
        if m:
            if len(m.group(1)) > 20:
                raise ValueError(f"size {_show(value)} is out of range (at most 1TiB)")
            size = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
            if size > MAX_SIZE:
                raise ValueError(f"size {_show(value)} is out of range (at most 1TiB)")
            return int(size)
    raise ValueError(f"expected a size like 1MiB or 500KB, got {_show(value)}")


def _show(value: object) -> str:
    if isinstance(value, EnvStr):
        return "a value from the environment"  # may be a secret referenced by mistake
    if isinstance(value, str):
        return f'"{value[:_MAX_TEXT]}..."' if len(value) > _MAX_TEXT else f'"{value}"'
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return "a number of more than 18 digits"
    return repr(value)


def human_duration(seconds: float) -> str:
    """A duration as people write it: "45 s", "4 min", "2 h 10 min", "3 d 4 h"."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
