"""YAML to Python values with positions, bounded: hostile files get a located error, not a crash.

Built on the event stream of PyYAML's parser (libyaml when available), in one iterative pass:
no recursion whatever the nesting, aliases counted as the size they expand to (an alias bomb is
refused before anything expands it), depth and list lengths capped.  Every value's position is
recorded by its key path, so later validation errors can name a line.  The result is what
``yaml.safe_load`` gives for the same file (YAML 1.1 scalars, ``<<`` merge keys), with duplicate
keys reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_DEPTH = 64
"""Nesting of mappings and lists; a real config needs about 8."""
MAX_VALUES = 4_000_000
"""Values in the document once aliases are expanded (50,000 targets need about 1,000,000)."""
MAX_LIST = 200_000
"""Items in one list or mapping (the targets list included)."""

Path = tuple[Any, ...]


class YAMLProblem(Exception):
    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None
        self.column = mark.column + 1 if mark is not None else None


@dataclass
class Loaded:
    value: Any
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path, int, int, int]] = field(default_factory=list)
    """(path, line, column, line of the first occurrence) of each repeated key."""


# Implicit resolution of plain scalars, as SafeLoader does it; most scalars are plain strings,
# recognised by their first character without running the resolver's regular expressions.
_RESOLVER = yaml.resolver.Resolver()
_MAYBE_TYPED = set("0123456789+-.~nNtTfFyYoO<=")
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_STR = "tag:yaml.org,2002:str"
_KNOWN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp",
                                                     "binary", "seq", "map", "merge", "value")}


def _scalar(event: yaml.ScalarEvent) -> Any:
    value = event.value
    tag = event.tag
    if tag is None or tag == "!":
        if not event.implicit[0] or not value or value[0] not in _MAYBE_TYPED:
            if value or not event.implicit[0]:
                return value
        tag = _RESOLVER.resolve(yaml.ScalarNode, value, event.implicit)
    if tag == _STR:
        return value
    if tag not in _KNOWN_TAGS or tag.endswith(("seq", "map")):
        raise YAMLProblem(f"unsupported tag {tag[:40]}", event.start_mark)
    if tag.endswith(":merge"):
        return _Merge
    node = yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
    try:
        return _CONSTRUCTOR.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise YAMLProblem(f"cannot read {value[:40]!r} as {tag.rsplit(':', 1)[-1]}: "
                          f"{getattr(exc, 'problem', None) or exc}", event.start_mark) from None


class _Merge:
    """The ``<<`` merge key."""


class _Frame:
    __slots__ = ("container", "path", "size", "key", "key_mark", "seen", "merges", "anchor", "mark")

    def __init__(self, container: Any, path: Path, anchor: str | None, mark: Any):
        self.container = container
        self.path = path
        self.size = 1
        self.key: Any = None
        self.key_mark: Any = None
        self.seen: dict[Any, int] = {}
        self.merges: list[Any] = []
        self.anchor = anchor
        self.mark = mark


def load(text: str) -> Loaded:
    """The first document of ``text``; raises YAMLProblem (with a position when there is one)."""
    out = Loaded(None)
    anchors: dict[str, tuple[Any, int]] = {}
    stack: list[_Frame] = []
    total = 0
    done = False

    def count(n: int, mark: Any) -> None:
        nonlocal total
        total += n
        if total > MAX_VALUES:
            raise YAMLProblem(f"the document expands to more than {MAX_VALUES} values "
                              "(aliases referring to aliases?)", mark)

    def place(value: Any, size: int, mark: Any) -> None:
        nonlocal done
        if not stack:
            out.value = value
            done = True
            return
        top = stack[-1]
        top.size += size
        if isinstance(top.container, list):
            path = top.path + (len(top.container),)
            out.marks.setdefault(path, (mark.line + 1, mark.column + 1))
            top.container.append(value)
            if len(top.container) > MAX_LIST:
                raise YAMLProblem(f"a list has more than {MAX_LIST} items", mark)
            return
        if top.key_mark is None:  # this value is a key
            if isinstance(value, dict | list):
                raise YAMLProblem("a key must be a plain value, not a mapping or a list", mark)
            top.key, top.key_mark = value, mark
            return
        key, key_mark = top.key, top.key_mark
        top.key, top.key_mark = None, None
        if key is _Merge:
            top.merges.extend(value if isinstance(value, list) else [value])
            return
        try:
            hash(key)
        except TypeError:
            raise YAMLProblem("a key must be a plain value", key_mark) from None
        path = top.path + (key,)
        line = key_mark.line + 1
        if key in top.seen:
            out.duplicates.append((path, line, key_mark.column + 1, top.seen[key]))
        else:
            top.seen[key] = line
        out.marks[path] = (line, key_mark.column + 1)
        top.container[key] = value
        if len(top.container) > MAX_LIST:
            raise YAMLProblem(f"a mapping has more than {MAX_LIST} keys", mark)

    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if done:
                if isinstance(event, yaml.DocumentStartEvent):
                    raise YAMLProblem("expected one YAML document, found a second one", event.start_mark)
                continue
            if isinstance(event, yaml.ScalarEvent):
                value = _scalar(event)
                if not stack:
                    out.marks[()] = (event.start_mark.line + 1, event.start_mark.column + 1)
                if event.anchor:
                    anchors[event.anchor] = (value, 1)
                count(1, event.start_mark)
                place(value, 1, event.start_mark)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    raise YAMLProblem(f"unknown alias *{event.anchor[:40]}", event.start_mark)
                value, size = anchors[event.anchor]
                count(size, event.start_mark)
                place(value, size, event.start_mark)
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise YAMLProblem(f"nesting is deeper than {MAX_DEPTH} levels", event.start_mark)
                if event.tag not in (None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
                    raise YAMLProblem(f"unsupported tag {event.tag[:40]}", event.start_mark)
                if stack and isinstance(stack[-1].container, dict) and stack[-1].key_mark is None:
                    raise YAMLProblem("a key must be a plain value, not a mapping or a list", event.start_mark)
                if stack:
                    top = stack[-1]
                    path = top.path + ((len(top.container),) if isinstance(top.container, list) else (top.key,))
                else:
                    path = ()
                    out.marks[()] = (event.start_mark.line + 1, event.start_mark.column + 1)
                count(1, event.start_mark)
                container: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
                stack.append(_Frame(container, path, event.anchor, event.start_mark))
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                frame = stack.pop()
                if frame.merges:
                    for src in frame.merges:
                        if not isinstance(src, dict):
                            raise YAMLProblem("<< must merge a mapping or a list of mappings", frame.mark)
                        for k, v in src.items():
                            frame.container.setdefault(k, v)
                if frame.anchor:
                    anchors[frame.anchor] = (frame.container, frame.size)
                place(frame.container, frame.size, frame.mark)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is None and isinstance(getattr(exc, "position", None), int):  # the reader: a bad character
            pos = exc.position  # type: ignore[attr-defined]
            mark = yaml.Mark("", pos, text.count("\n", 0, pos), pos - (text.rfind("\n", 0, pos) + 1), None, None)
            reason = f"character {getattr(exc, 'character', '?')!r} is not allowed in YAML"
        else:
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YAMLProblem(f"invalid YAML: {reason}", mark) from None
    return out
