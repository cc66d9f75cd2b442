"""Keep secrets out of labels, logs, debug pages and error messages."""

from __future__ import annotations

import re
from collections.abc import Iterable

# scheme://user:password@host -> scheme://user:***@host (SQLAlchemy URLs and HTTP URLs alike).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
# key=value pairs in query strings and libpq-style DSNs.
_KV = re.compile(r"(?i)\b(password|passwd|pwd|token|api_key|apikey|secret|access_token)=([^&\s;]+)")
MASK = "***"


def redact_url(text: str) -> str:
    """Mask passwords in URLs and key=value secrets inside any string."""
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if "=" in text:
        text = _KV.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return text


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove known secret values and URL passwords from a message."""
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, MASK)
    return redact_url(text)
