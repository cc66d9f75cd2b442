"""Loading any of stackwatch's YAML files: read (bounded), decode, parse with positions, expand
``${ENV}``, validate against a pydantic model, and report every problem as one ConfigError.

One error type and one message path for the target config (stackwatch.config) and the web config
(stackwatch.webconfig): a problem names the file, the key path, the line and column, and says
what was expected; a value that may be a secret is never echoed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from stackwatch import yamlload
from stackwatch.redact import EnvStr, is_secret_name, redact_url

MAX_FILE_BYTES = 32 * 1024 * 1024
"""The largest config file read (50,000 targets take about 8 MiB)."""


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = f" (line {self.line}, column {self.column})" if self.line else ""
        return f"{self.path or '<top level>'}{where}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found in a config file."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, list[Problem]]]:
        return (ConfigError, (self.source, self.problems))  # a child process's load error crosses a pipe

    def render(self) -> str:
        head = f"{self.source}: {len(self.problems)} error{'s' if len(self.problems) != 1 else ''}"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def format_path(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show_value(value: Any, path: tuple[Any, ...] = ()) -> str:
    if path and isinstance(path[-1], str) and is_secret_name(path[-1]):
        return "<redacted>"
    if isinstance(value, EnvStr):
        return "a value from the environment"  # never echoed: it may be a secret in the wrong field
    if isinstance(value, str):
        shown = redact_url(value)
        return f'"{shown[:80]}..."' if len(shown) > 80 else f'"{shown}"'
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return "a number of more than 18 digits"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_FRIENDLY = {
    "missing": "required key is missing",
    "int_parsing": "expected an integer, got {input}",
    "int_type": "expected an integer, got {input}",
    "int_from_float": "expected an integer, got {input}",
    "float_parsing": "expected a number, got {input}",
    "float_type": "expected a number, got {input}",
    "bool_parsing": "expected true or false, got {input}",
    "bool_type": "expected true or false, got {input}",
    "string_type": "expected a string, got {input}",
    "dict_type": "expected a mapping, got {input}",
    "model_type": "expected a mapping, got {input}",
    "model_attributes_type": "expected a mapping, got {input}",
    "list_type": "expected a list, got {input}",
    "greater_than_equal": "expected a value >= {ge}, got {input}",
    "less_than_equal": "expected a value <= {le}, got {input}",
    "greater_than": "expected a value > {gt}, got {input}",
    "literal_error": "expected one of {expected}, got {input}",
    "enum": "expected one of {expected}, got {input}",
    "string_too_short": "expected at least {min_length} characters",
}


def located_problems(exc: ValidationError, marks: dict[tuple[Any, ...], tuple[int, int]],
                     model: type[BaseModel]) -> list[Problem]:
    """A model's validation errors as located Problems: the key path, the line and column of the
    nearest key the YAML loader marked, and a message that names the allowed fields."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        line, col = next((marks[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in marks), (None, None))
        problems.append(Problem(format_path(loc), line, col, problem_message(err, loc, model)))
    return problems


def problem_message(err: dict[str, Any], path: tuple[Any, ...], model: type[BaseModel] | None) -> str:
    kind = err["type"]
    ctx = dict(err.get("ctx") or {})
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return msg.removeprefix("Value error, ")
    if kind == "assertion_error":
        return err["msg"].removeprefix("Assertion failed, ")
    if kind == "extra_forbidden":
        allowed = _fields_at(model, path[:-1]) if model else None
        close = difflib.get_close_matches(str(path[-1]), allowed or [], n=1)
        if close:
            return f'unknown key; did you mean "{close[0]}"?'
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown key{hint}"
    template = _FRIENDLY.get(kind)
    if template:
        ctx["input"] = show_value(err.get("input"), path)
        try:
            return template.format(**ctx)
        except (KeyError, IndexError):
            pass
    return f"{err['msg']}, got {show_value(err.get('input'), path)}"


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str] | None:
    """The keys a model accepts at a path, for 'unknown key' hints (best effort)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        f = current.model_fields.get(part)
        if f is None:
            return None
        current = _inner_model(f.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


class Locator:
    """Line and column of a key path: its own mark, or the nearest enclosing key's."""

    def __init__(self, marks: dict[tuple[Any, ...], tuple[int, int]] | None = None) -> None:
        self.marks = marks if marks is not None else {}

    def at(self, path: tuple[Any, ...]) -> tuple[int | None, int | None]:
        for n in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:n]))
            if mark:
                return mark
        return None, None


_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, path: tuple[Any, ...], env: dict[str, str], loc: Locator, problems: list[Problem]) -> Any:
    """``${NAME}`` and ``${NAME:-default}`` in every string (``$$`` is a dollar); an unset variable
    without a default is a located problem.  A string that took a value from the environment
    becomes an EnvStr, so it is never echoed and never counts as an inline secret."""
    if isinstance(value, dict):
        return {k: expand_env(v, path + (k,), env, loc, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, path + (i,), env, loc, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    used_env = False

    def sub(m: re.Match[str]) -> str:
        nonlocal used_env
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            used_env = True
            return env[name]
        if default is not None:
            # "${TOKEN:-}" (no token) is not an inline secret; "${TOKEN:-hunter2}" still is.
            used_env = used_env or default == ""
            return default
        line, col = loc.at(path)
        problems.append(Problem(format_path(path), line, col, f"environment variable {name} is not set"))
        used_env = True  # already reported; not also an "inline secret"
        return ""

    expanded = _ENV_REF.sub(sub, value)
    return EnvStr(expanded) if used_env else expanded


def decode(raw: bytes, source: str) -> str:
    """UTF-8 text of a config file, or a ConfigError at the line and column of the first bad byte."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(source, [Problem("", line, column, f"the file is not UTF-8: byte 0x{raw[exc.start]:02x} "
                                                             f"cannot start or continue a character")]) from None


def line_hint(text: str, line: int | None) -> str:
    """The offending line, for syntax errors (not shown if it may hold a secret)."""
    if line is None:
        return ""
    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return ""
    shown = lines[line - 1].strip()
    if not shown or is_secret_name(shown) or "${" in shown:
        return ""
    shown = redact_url(shown)
    return f' (the line reads: "{shown[:80]}")'


def read_text(path: str | Path, limit: int = MAX_FILE_BYTES) -> str:
    """A file's text, at most ``limit`` bytes; ConfigError when it cannot be read, is larger,
    or is not UTF-8 (at the line and column of the first bad byte)."""
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(source, [Problem("", None, None, f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > limit:
        size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"
        raise ConfigError(source, [Problem("", None, None, f"the file is larger than {size}")])
    return decode(raw, source)


def parse_yaml(text: str, source: str) -> tuple[yamlload.Loaded, list[Problem]]:
    """The document with its positions, and the problems found so far (repeated keys).  Invalid
    YAML raises ConfigError at its line, quoting the line unless it may hold a secret."""
    try:
        loaded = yamlload.load(text)
    except yamlload.YAMLProblem as exc:
        hint = line_hint(text, exc.line) if exc.message.startswith("invalid YAML") else ""
        raise ConfigError(source, [Problem("", exc.line, exc.column, exc.message + hint)]) from None
    problems = [Problem(format_path(path), line, col, f"duplicate key (first set on line {first})")
                for path, line, col, first in loaded.duplicates]
    return loaded, problems


def by_position(p: Problem) -> tuple[int, int]:
    """Sort key: problems in file order."""
    return (p.line or 0, p.column or 0)
