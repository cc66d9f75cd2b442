"""The one JSON path language of stackwatch (JSONPath, via jsonpath-ng) and Gatus-style assertions.

Paths start with ``$``: ``$.status``, ``$.features[*]``, ``$.partners[?(@.level < 20)]``.
Assertions read like Gatus conditions::

    $.status == healthy
    $.version =~ ^3\\.
    len($.features) > 0
    has($.database)            !has($.error)
    $.checks[*].ok == true     (every match must satisfy the comparison)

A failed assertion reports the value it saw: ``$.status (degraded) == healthy``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from jsonpath_ng import JSONPath
from jsonpath_ng.ext import parse as _parse_ext
from pydantic import PlainSerializer, PlainValidator

from stackwatch.probes.base import sanitize_label_value

MISSING = object()


@dataclass(frozen=True)
class JSONPathExpr:
    text: str
    compiled: JSONPath = field(compare=False)  # equal texts compile to equal paths

    def find(self, doc: Any) -> list[Any]:
        return [m.value for m in self.compiled.find(doc)]

    def find_with_keys(self, doc: Any) -> list[tuple[str, str, Any]]:
        """Matches as (map key or array index, where in the document, value)."""
        out = []
        for m in self.compiled.find(doc):
            path = m.path
            fields = getattr(path, "fields", None)
            indices = getattr(path, "indices", None)
            key = str(fields[0]) if fields else str(indices[0]) if indices else ""
            where = "$." + str(m.full_path).replace(".[", "[")
            out.append((key, where, m.value))
        return out

    def __str__(self) -> str:
        return self.text


def compile_path(text: str) -> JSONPathExpr:
    """Compile a JSONPath; raise ValueError naming the path when it does not parse.

    Compiled once per distinct text and shared (the objects are immutable): jsonpath-ng builds
    a PLY lexer and parser for every parse, ~1.5 ms, which made loading 100k targets with one
    assertion each take 76 s."""
    if not isinstance(text, str):
        raise ValueError(f'expected a JSON path starting with $, like $.status, got "{text}"')
    return _compile_path(text)


@functools.lru_cache(maxsize=8192)
def _compile_path(text: str) -> JSONPathExpr:
    if not text.strip().startswith("$"):
        raise ValueError(f'expected a JSON path starting with $, like $.status, got "{text}"')
    try:
        return JSONPathExpr(text.strip(), _parse_ext(text.strip()))
    except Exception as exc:  # jsonpath-ng raises JsonPathParserError, JsonPathLexerError and bare Exception
        raise ValueError(f'invalid JSON path "{text}": {str(exc).splitlines()[0]}') from None


_OPS = ("==", "!=", "<=", ">=", "=~", "<", ">")
_ASSERTION = re.compile(
    r"^\s*(?P<neg>!)?\s*(?:(?P<func>len|has)\(\s*(?P<fpath>\$.*?)\s*\)|(?P<path>\$\S*))"
    r"\s*(?:(?P<op>==|!=|<=|>=|=~|<|>)\s*(?P<rhs>.*?))?\s*$"
)


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "nil", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def show(value: Any) -> str:
    if value is MISSING:
        return "missing"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 64 else text[:61] + "..."


@dataclass(frozen=True)
class Assertion:
    text: str
    path: JSONPathExpr
    func: str | None
    negate: bool
    op: str | None
    rhs_text: str
    rhs: Any
    regexp: re.Pattern[str] | None

    def check(self, doc: Any) -> tuple[bool, str]:
        """Evaluate against a parsed JSON document: (passed, text showing the value seen)."""
        matches = self.path.find(doc)
        if self.func == "has":
            ok = bool(matches) != self.negate
            return ok, f"{'!' if self.negate else ''}has({self.path}) ({'present' if matches else 'missing'})"
        if self.func == "len":
            if len(matches) == 1 and isinstance(matches[0], list | dict | str):
                values: list[Any] = [len(matches[0])]
            else:
                values = [len(matches)]
            lhs = f"len({self.path})"
        else:
            values = matches or [MISSING]
            lhs = str(self.path)
        for value in values:
            if not self._compare(value):
                return False, f"{lhs} ({show(value)}) {self.op} {self.rhs_text}"
        return True, f"{lhs} ({show(values[0])}) {self.op} {self.rhs_text}"

    def _compare(self, value: Any) -> bool:
        if value is MISSING:
            return self.op == "!=" and self.rhs is not None
        op, rhs = self.op, self.rhs
        if op == "=~":
            assert self.regexp is not None
            return self.regexp.search(value if isinstance(value, str) else show(value)) is not None
        left, right = _comparable(value, rhs, self.rhs_text)
        if op == "==":
            return left == right
        if op == "!=":
            return left != right
        try:
            if op == "<":
                return left < right
            if op == "<=":
                return left <= right
            if op == ">":
                return left > right
            return left >= right
        except TypeError:
            return False


def _comparable(value: Any, rhs: Any, rhs_text: str) -> tuple[Any, Any]:
    """Compare numbers as numbers, booleans as booleans, everything else as text."""
    if isinstance(value, bool) or isinstance(rhs, bool):
        return value, rhs
    if isinstance(value, int | float) and isinstance(rhs, int | float):
        return float(value), float(rhs)
    if isinstance(value, str) and isinstance(rhs, int | float):
        try:
            f = float(value)
            if not math.isnan(f):
                return f, float(rhs)
        except ValueError:
            pass
        return value, rhs_text
    if value is None or rhs is None:
        return value, rhs
    if isinstance(value, str):
        return value, rhs if isinstance(rhs, str) else rhs_text
    return show(value), rhs_text


def compile_assertion(text: str) -> Assertion:
    """Parse one assertion; raise ValueError saying what is wrong with it.  Compiled once per
    distinct text and shared, like compile_path."""
    if not isinstance(text, str):
        raise ValueError(f"expected an assertion like '$.status == healthy', got {text!r}")
    if len(text) > 4096:
        raise ValueError(f"assertion longer than 4096 characters: {text[:60]!r}...")
    return _compile_assertion(text)


@functools.lru_cache(maxsize=8192)
def _compile_assertion(text: str) -> Assertion:
    m = _ASSERTION.match(text)
    if not m:
        raise ValueError(f'cannot read assertion "{text}"; expected e.g. "$.status == healthy" or "len($.items) > 0"')
    func = m.group("func")
    op = m.group("op")
    path = compile_path(m.group("fpath") or m.group("path"))
    negate = bool(m.group("neg"))
    if negate and func != "has":
        raise ValueError(f'"!" is only allowed before has(), in "{text}"')
    if func == "has":
        if op:
            raise ValueError(f'has() takes no comparison, in "{text}"')
        return Assertion(text.strip(), path, func, negate, None, "", None, None)
    if not op:
        raise ValueError(f'assertion "{text}" has no comparison; expected one of {", ".join(_OPS)}')
    rhs_text = (m.group("rhs") or "").strip()
    regexp = None
    if op == "=~":
        try:
            regexp = re.compile(_literal(rhs_text) if rhs_text[:1] in "\"'" else rhs_text)
        except re.error as exc:
            raise ValueError(f'invalid regular expression in "{text}": {exc}') from None
    if rhs_text == "" and op != "=~":
        raise ValueError(f'assertion "{text}" has nothing to compare with after {op}')
    rhs = _literal(rhs_text)
    if (func == "len" and not isinstance(rhs, int | float)) or (op in ("<", "<=", ">", ">=") and isinstance(rhs, bool)):
        raise ValueError(f'assertion "{text}" compares with {op} against a non-number')
    return Assertion(text.strip(), path, func, negate, op, rhs_text, rhs, regexp)


JSONPathField = Annotated[
    JSONPathExpr,
    PlainValidator(lambda v: v if isinstance(v, JSONPathExpr) else compile_path(v)),
    PlainSerializer(lambda p: p.text, return_type=str),
]
"""A config field holding a JSON path, compiled at load (a bad path is a config error)."""


def to_number(value: Any, value_map: dict[str, float] | None = None, default: float | None = None) -> float:
    """A JSON value as a float (booleans 1/0, numeric strings parsed, mapped strings mapped),
    or ValueError saying what was found."""
    value_map = value_map or {}
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value in value_map:
            return value_map[value]
        try:
            return float(value.strip())
        except ValueError:
            if default is not None:
                return default
            known = f" (value_map knows {', '.join(value_map)})" if value_map else ""
            raise ValueError(f'expected a number, got "{sanitize_label_value(value)[:40]}"{known}') from None
    kind = "null" if value is None else "an object" if isinstance(value, dict) else "an array"
    raise ValueError(f"expected a number, got {kind}")


def parse_json(body: bytes | str) -> Any:
    """A response body as JSON; ValueError (never RecursionError) for anything that is not."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("nesting is too deep (about 1,000 levels or more)") from None
