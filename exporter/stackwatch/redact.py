"""The one redaction policy: which names hold secrets, and how a secret is kept out of output.

Everything that writes text a user may see (labels, logs, the status and debug pages, config
errors, ``check-config``) goes through this module:

* :data:`SECRET_NAME` decides which mapping keys, URL query parameters and config fields hold
  secrets (header names such as ``X-Api-Key``, ``password=`` in a DSN, ``sslpassword``...);
* :func:`collect_secrets` walks a config object and returns every secret value it holds;
* :func:`scrub` removes known secret values, and every form they take, from a message;
* :func:`redact_url` masks what looks secret in a string even when the value is not known
  (URL userinfo, ``key=value`` pairs with a secret name);
* :func:`mask_tree` turns a config dump into one with every secret replaced by ``<secret>``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretStr

MASK = "***"


class EnvStr(str):
    """A string whose value came (at least partly) from a ${ENV_VAR} reference.

    Secret fields accept only these (an inline literal is refused), and error messages never
    echo them: a secret referenced from the wrong field must not be printed."""

SECRET_PLACEHOLDER = "<secret>"

SECRET_NAME = re.compile(
    r"(?i)(authorization|cookie|token|secret|password|passwd|pwd|api[-_]?key|apikey|access[-_]?key"
    r"|credentials|private[-_]?key|dsn)"
)
"""Names (header names, mapping keys, URL query parameters, config fields) whose values are secrets."""

# scheme://user:password@host -> scheme://user:***@host (SQLAlchemy URLs and HTTP URLs alike).
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")
# key=value pairs in query strings and libpq-style DSNs, whose key is a secret name.
_KV = re.compile(r"(?P<key>[A-Za-z0-9_.-]*)=(?P<value>[^&\s;]+)")


def is_secret_name(name: object) -> bool:
    return bool(SECRET_NAME.search(str(name)))


def redact_url(text: str) -> str:
    """Mask passwords in URLs and key=value secrets inside any string."""
    if "://" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if "=" in text:
        text = _KV.sub(lambda m: f"{m['key']}={MASK}" if is_secret_name(m["key"]) else m.group(0), text)
    return text


def _forms(secret: str) -> Iterable[str]:
    """Every form a secret can take in output: as given, URL-encoded, base64 (as in a Basic
    Authorization header, alone or as user:secret), and each line of a multi-line value."""
    yield secret
    for enc in (quote(secret, safe=""), quote_plus(secret)):
        if enc != secret:
            yield enc
    yield base64.b64encode(secret.encode()).decode()
    if "\n" in secret or "\r" in secret:
        for part in re.split(r"[\r\n]+", secret):
            if len(part) >= 3:
                yield part


def expand_forms(secrets: Iterable[str]) -> list[str]:
    """Secrets and their derived forms, longest first (so a longer form is masked whole)."""
    out = {form for s in secrets if s and len(s) >= 3 for form in _forms(s)}
    return sorted(out, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove known secret values (in every form, see :func:`expand_forms`) and URL passwords."""
    return redact_url(mask_forms(text, expand_forms(secrets)))


def mask_forms(text: str, forms: list[str]) -> str:
    """Replace each of the (already expanded, longest first) secret forms in ``text``."""
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def basic_auth_forms(username: str, password: str) -> list[str]:
    """The base64 token a Basic Authorization header carries for these credentials."""
    return [base64.b64encode(f"{username}:{password}".encode()).decode()] if password else []


def collect_secrets(obj: Any) -> list[str]:
    """Every secret value inside a config object: SecretStr fields, and string values of
    mapping keys with a secret name (e.g. an ``X-Api-Key`` header)."""
    out: list[str] = []

    def walk(o: Any, depth: int) -> None:
        if depth > 64:
            return
        if isinstance(o, SecretStr):
            v = o.get_secret_value()
            if v:
                out.append(v)
        elif isinstance(o, BaseModel):
            for name in type(o).model_fields:
                walk(getattr(o, name), depth + 1)
            user, pw = getattr(o, "username", None), getattr(o, "password", None)
            if isinstance(user, str) and isinstance(pw, SecretStr):
                out.extend(basic_auth_forms(user, pw.get_secret_value()))  # as a Basic header carries them
        elif isinstance(o, dict):
            for k, v in o.items():
                if isinstance(v, str) and is_secret_name(k):
                    out.append(v)
                else:
                    walk(v, depth + 1)
        elif isinstance(o, list | tuple):
            for v in o:
                walk(v, depth + 1)

    walk(obj, 0)
    return out


def mask_tree(obj: Any) -> Any:
    """A plain-data dump with secrets replaced by ``<secret>`` and URL passwords masked."""
    if isinstance(obj, SecretStr):
        return SECRET_PLACEHOLDER if obj.get_secret_value() else ""
    if isinstance(obj, dict):
        return {k: SECRET_PLACEHOLDER if isinstance(v, str) and is_secret_name(k) else mask_tree(v)
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [mask_tree(v) for v in obj]
    if isinstance(obj, str):
        return redact_url(obj)
    return obj
