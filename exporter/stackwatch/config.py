"""Configuration: one YAML file, typed models, errors that name the key path and the line.

Loading happens in three steps:

1. YAML is composed into nodes so every value keeps its line and column.
2. ``${ENV_VAR}`` references are expanded (``${VAR:-default}`` gives a default,
   ``$$`` a literal dollar).  Strings that came from the environment are marked,
   which is how secret fields tell an inline secret from a referenced one.
3. The top level is validated, then each target by the model of its ``kind``
   (see :mod:`stackwatch.probes`).  Every problem is collected, not just the
   first, and each one is reported as ``path (line L, column C): message``.

A config that loads is valid: probes never re-check their own settings.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from stackwatch.durations import format_duration, parse_duration, parse_size
from stackwatch.loader import (
    ConfigError,
    Locator,
    Problem,
    by_position,
    expand_env,
    format_path,
    parse_yaml,
    problem_message,
    read_text,
    show_value,
)
from stackwatch.redact import (
    EnvStr,
    collect_secrets,
    expand_forms,
    is_secret_name,
    mask_tree,
    redact_url,
)

# --------------------------------------------------------------------------- types


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"}),
]
"""Seconds, written in the file as a Prometheus duration ("500ms", "15s", "1m")."""

ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, written as "1MiB", "512KiB" or a plain integer."""

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

# Label names stackwatch itself puts on series; user labels may not shadow them.
RESERVED_LABELS = frozenset(
    "target kind reason le quantile instance job phase key value assertion result "
    "source field invariant account asset query column table index alias version vote".split()
)


def _label_name(value: Any) -> str:
    if not isinstance(value, str) or not LABEL_NAME.match(value) or value.startswith("__"):
        raise ValueError(f"expected a Prometheus label name like env or team, got {show_value(value)}")
    if value in RESERVED_LABELS:
        raise ValueError(f'label name "{value}" is reserved for stackwatch\'s own labels')
    return value


LabelName = Annotated[str, BeforeValidator(_label_name)]

def _secret(value: Any) -> Any:
    if value is None or isinstance(value, SecretStr):
        return value
    if isinstance(value, str) and not isinstance(value, EnvStr):
        raise ValueError("inline secrets are not accepted; use ${ENV_VAR} or the matching *_file key")
    return value


Secret = Annotated[SecretStr, BeforeValidator(_secret)]
"""A secret: accepted only from ${ENV_VAR} expansion (or loaded from a *_file key)."""


def read_secret_file(path: str, what: str) -> SecretStr:
    """Read a secret file at load time; a trailing newline is not part of the secret."""
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").rstrip("\r\n"))
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def secret_from(inline: SecretStr | None, file: str | None, what: str) -> SecretStr | None:
    if inline is not None and file is not None:
        raise ValueError(f"set either {what} or {what}_file, not both")
    value = read_secret_file(file, f"{what}_file") if file is not None else inline
    if value is not None and any(c in value.get_secret_value() for c in "\r\n\0"):
        # It would go into a header or a connection string; the error must not show it.
        raise ValueError(f"{what}{'_file' if file is not None else ''}: the secret contains a line break "
                         "or NUL byte, which no header or connection string can carry")
    return value


class Model(BaseModel):
    """Base for every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __eq__(self, other: object) -> bool:
        # By value of the fields only: private attributes are caches (parsed URLs, secrets
        # computed on first use), and must not make a reloaded, unchanged target look changed.
        return type(self) is type(other) and self.__dict__ == other.__dict__  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return id(type(self))

    def __repr_args__(self) -> Any:
        # Header values such as X-Api-Key are plain strings; keep them out of reprs too.
        for name, value in super().__repr_args__():
            if isinstance(value, dict) and any(is_secret_name(k) for k in value):
                value = {k: "<secret>" if is_secret_name(k) else v for k, v in value.items()}
            elif isinstance(value, str):
                value = redact_url(value)  # a URL that came whole from ${ENV} may hold a password
            yield name, value


# --------------------------------------------------------------------------- top level


class Defaults(Model):
    """Inherited by every target that does not set its own value."""

    interval: Duration = 15.0
    timeout: Duration = 5.0
    labels: dict[LabelName, str] = Field(default_factory=dict)


class SchedulerSettings(Model):
    """Bounds on the probe scheduler."""

    max_concurrent_probes: int = Field(64, ge=1, le=10_000)
    """Probes in flight at once, over all targets (measured best at 16-64, see bench/)."""


class TargetConfig(Model):
    """Fields every target has, whatever its kind.  Each probe kind subclasses this."""

    name: str
    kind: str
    interval: Duration | None = None
    timeout: Duration | None = None
    """As written; None means "from ``defaults``".  Loading fills both in (resolved_timing), so
    the code after it reads :attr:`every` and :attr:`deadline`, which say so by their type."""
    labels: dict[LabelName, str] = Field(default_factory=dict)

    @property
    def every(self) -> float:
        """Seconds between probes, as loaded (the target's own interval or the defaults')."""
        if self.interval is None:
            raise RuntimeError(f"target {self.name}: the interval is filled in by loading the config")
        return float(self.interval)

    @property
    def deadline(self) -> float:
        """Seconds a probe may take, as loaded (never more than the interval)."""
        if self.timeout is None:
            raise RuntimeError(f"target {self.name}: the timeout is filled in by loading the config")
        return float(self.timeout)

    @model_validator(mode="before")
    @classmethod
    def _check_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("name")
            if isinstance(name, str) and not TARGET_NAME.match(name):
                raise ValueError(
                    f"name: expected letters, digits and _ . : - (starting with a letter or digit), got {show_value(name)}"
                )
        return data

    # Caches computed on first use.  The probe path reads them through ``__pydantic_private__``:
    # pydantic's __getattr__ for a private attribute costs ~10 us a read (bench/micro.py profile).
    _secrets: list[str] | None = PrivateAttr(default=None)
    _secret_forms: list[str] | None = PrivateAttr(default=None)

    def secret_forms(self) -> list[str]:
        """Every form of every secret this target holds (see redact.expand_forms), computed once."""
        private = self.__pydantic_private__  # read on every probe (see the note above)
        forms = private["_secret_forms"]
        if forms is None:
            forms = private["_secret_forms"] = expand_forms(self.secrets())
        return forms

    def warnings(self) -> list[str]:
        """Valid but probably not meant: check-config prints these and the exporter logs them."""
        return []

    def declared_families(self) -> list[Any]:
        """Metric families this target's config declares (JSON/SQL metrics); checked across targets."""
        return []

    def secrets(self) -> list[str]:
        """Every secret value this target holds, for scrubbing log lines and errors (computed once)."""
        private = self.__pydantic_private__
        if private["_secrets"] is not None:
            return private["_secrets"]
        out = collect_secrets(self)
        out.extend(self.extra_secrets())
        private["_secrets"] = out
        return out

    def extra_secrets(self) -> list[str]:
        """Secrets a kind holds outside SecretStr fields (e.g. a password inside a URL)."""
        return []


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected a time like 2026-12-24T22:00:00Z, got {show_value(value)}") from None
    else:
        raise ValueError(f"expected a time like 2026-12-24T22:00:00Z, got {show_value(value)}")
    if moment.tzinfo is None:
        raise ValueError(f"give the time zone (Z or +01:00), got {show_value(str(value))}")
    return moment.timestamp()


Timestamp = Annotated[float, BeforeValidator(_timestamp)]
"""Unix seconds, written in the file as an RFC 3339 time with its zone."""


class MaintenanceWindow(Model):
    """Planned work: the targets' alerts are silenced in Alertmanager, the status page says so,
    and the report leaves the window out of availability."""

    name: str = Field(min_length=1, max_length=128)
    targets: list[str] = Field(min_length=1, max_length=10_000)
    start: Timestamp
    end: Timestamp
    comment: str = Field("", max_length=1000)

    @model_validator(mode="after")
    def _order(self) -> MaintenanceWindow:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def active(self, at: float) -> bool:
        return self.start <= at < self.end


class _TopLevel(Model):
    defaults: Defaults = Field(default_factory=Defaults)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    maintenance: list[MaintenanceWindow] = Field(default_factory=list, max_length=1000)
    targets: list[dict[str, Any]] = Field(default_factory=list)


def shard_of(name: str, count: int) -> int:
    """The shard (0 .. count-1) a target name belongs to."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % count


@dataclass(frozen=True)
class Config:
    """A loaded, validated config: targets have their interval, timeout and labels resolved."""

    defaults: Defaults
    scheduler: SchedulerSettings
    targets: tuple[TargetConfig, ...]
    source: str = "<memory>"
    maintenance: tuple[MaintenanceWindow, ...] = ()
    shard_heartbeats: tuple[TargetConfig, ...] | None = None
    """For a shard's config: every heartbeat check of the whole file (None: ``targets`` is the
    whole file)."""

    @property
    def heartbeats(self) -> tuple[TargetConfig, ...]:
        """Every heartbeat check of the whole file, whatever the shard: a push may reach any
        replica or worker."""
        if self.shard_heartbeats is not None:
            return self.shard_heartbeats
        return tuple(t for t in self.targets if t.kind == "heartbeat")

    def in_maintenance(self, target: str, at: float) -> MaintenanceWindow | None:
        return next((w for w in self.maintenance if target in w.targets and w.active(at)), None)

    def target(self, name: str) -> TargetConfig | None:
        for t in self.targets:
            if t.name == name:
                return t
        return None

    def shard(self, index: int, count: int) -> Config:
        """The targets this replica probes when ``count`` replicas share the config: each target
        belongs to exactly one shard, by a stable hash of its name (the same on every replica
        and across restarts; unrelated to the probe phase)."""
        if count <= 1:
            return self
        mine = tuple(t for t in self.targets if shard_of(t.name, count) == index)
        return Config(self.defaults, self.scheduler, mine, self.source, self.maintenance, self.heartbeats)

    def warnings(self) -> list[str]:
        """Every target's warnings, each naming the target and its place in the file."""
        return [f"targets[{i}] ({t.name}): {w}" for i, t in enumerate(self.targets) for w in t.warnings()]

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for t in self.targets:
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        return f"{self.source}: OK, {len(self.targets)} targets ({by_kind})"


# --------------------------------------------------------------------------- loading


class Sharing:
    """Makes equal parts of loaded targets one object (memory per target, bench/memory.py).

    Config models are frozen, and nothing changes a loaded model's containers, so targets can
    share equal field values: the same sub-model (a default TLS block), the same set of fields
    given, empty lists and mappings, equal numbers and short strings (the kind, the method, an
    interval).  At 10,000 similar targets this is ~1 KB a target of the model's ~2 KB.  Used
    for one load and dropped with it (its tables hold only what that load saw)."""

    SCALARS = (str, int, float, bool)
    MODELS_PER_TYPE = 16
    """Distinct sub-models kept per type to share: those are compared one by one."""

    def __init__(self) -> None:
        self._values: dict[tuple[type, Any], Any] = {}
        self._fields_sets: dict[frozenset[str], set[str]] = {}
        self._models: dict[type, list[BaseModel]] = {}
        self._empty: dict[type, Any] = {dict: {}, list: []}

    def model(self, m: BaseModel) -> BaseModel:
        """``m`` with its field values shared where equal (in place: the model is not shared yet)."""
        fields = m.__dict__
        changed = [(k, shared) for k, v in fields.items() if (shared := self.value(v)) is not v]
        for k, shared in changed:
            fields[k] = shared
        given = m.__pydantic_fields_set__
        shared_set = self._fields_sets.setdefault(frozenset(given), given)
        if shared_set is not given:
            object.__setattr__(m, "__pydantic_fields_set__", shared_set)
        return m

    def value(self, v: Any) -> Any:
        """``v``, or an equal value of the same type seen before in this load."""
        t = type(v)
        if t in self.SCALARS:
            if (t is str and len(v) > 64) or (t is float and v == 0.0):  # -0.0 == 0.0: keep each
                return v
            return self._values.setdefault((t, v), v)
        if t is dict or t is list:
            return self._empty[t] if not v else v
        if isinstance(v, Model):
            v = self.model(v)
            seen = self._models.setdefault(t, [])
            for other in seen:
                if other == v:
                    return other
            if len(seen) < self.MODELS_PER_TYPE:
                seen.append(v)
        return v


KindModels = Mapping[str, type["TargetConfig"]]
"""Config model of each probe kind, by kind name (see :mod:`stackwatch.kinds`)."""



def load_config(path: str | Path, env: dict[str, str] | None = None, *, kinds: KindModels,
                shard: tuple[int, int] = (0, 1)) -> Config:
    """Load and validate a config file; raise ConfigError listing every problem.  With ``shard``
    (index, count) every target is validated but only the shard's are kept (Config.shard)."""
    return parse_config(read_text(path), str(path), env, kinds=kinds, shard=shard)


def parse_config(text: str, source: str = "<memory>", env: dict[str, str] | None = None, *,
                 kinds: KindModels, shard: tuple[int, int] = (0, 1)) -> Config:
    """Parse and validate a config; raise ConfigError listing every problem.  Nothing a file
    holds makes this raise anything else: hostile input gets a located error, not a crash."""
    try:
        return _parse_config(text, source, env, kinds, shard)
    except ConfigError:
        raise
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        raise ConfigError(source, [Problem("", None, None, f"the config cannot be processed: "
                                                           f"{type(exc).__name__} (is it unusually deep or large?)")]
                          ) from None


def _parse_config(text: str, source: str, env: dict[str, str] | None, kinds: KindModels,
                  shard: tuple[int, int] = (0, 1)) -> Config:
    env = dict(os.environ) if env is None else env
    loaded, problems = parse_yaml(text, source)
    data = loaded.value
    loc = Locator(loaded.marks)
    if data is None:
        raise ConfigError(source, [Problem("", 1, 1, "the file is empty; expected a mapping with a targets list")])
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem("", 1, 1, f"expected a mapping with a targets list, got {show_value(data)}")])
    loaded.value = None  # memory: only the expanded copy is needed from here on
    data = expand_env(data, (), env, loc, problems)

    def add(err_path: tuple[Any, ...], message: str) -> None:
        line, col = loc.at(err_path)
        problems.append(Problem(format_path(err_path), line, col, message))

    def collect(exc: ValidationError, prefix: tuple[Any, ...], model: type[BaseModel]) -> None:
        for err in exc.errors(include_url=False):
            err_loc = tuple(p for p in err["loc"] if p != "[key]")  # pydantic marks dict-key errors so
            add(prefix + err_loc, problem_message(err, err_loc, model))

    try:
        top = _TopLevel.model_validate(data)
    except ValidationError as exc:
        collect(exc, (), _TopLevel)
        raise ConfigError(source, sorted(problems, key=by_position)) from None

    targets: list[TargetConfig] = []
    heartbeats: list[TargetConfig] = []
    sharing = Sharing()
    first_seen: dict[str, int] = {}
    families: dict[str, tuple[str, str]] = {}
    raws = top.targets
    del data
    for i in range(len(raws)):
        raw, raws[i] = raws[i], {}  # memory: each raw mapping is dropped once its target is built
        here = ("targets", i)
        kind_name = raw.get("kind")
        if kind_name is None:
            add(here + ("kind",), f"required key is missing; expected one of: {', '.join(sorted(kinds))}")
            continue
        model = kinds.get(kind_name) if isinstance(kind_name, str) else None
        if model is None:
            add(here + ("kind",), f"unknown kind {show_value(kind_name)}; expected one of: {', '.join(sorted(kinds))}")
            continue
        try:
            target = model.model_validate(raw)
        except ValidationError as exc:
            collect(exc, here, model)
            continue
        except (RecursionError, OverflowError, ValueError, TypeError, MemoryError) as exc:
            add(here, f"this target cannot be validated: {type(exc).__name__} (is it unusually deep or large?)")
            continue
        if target.name in first_seen:
            j = first_seen[target.name]
            add(here + ("name",), f'duplicate target name "{target.name}", first used by targets[{j}] '
                                  f"(line {loc.at(('targets', j, 'name'))[0]})")
            continue
        first_seen[target.name] = i
        resolved = _resolve(target, top.defaults)
        if isinstance(resolved, str):
            add(here + ("timeout",), resolved)
            continue
        _check_family_conflicts(resolved, i, families, add)
        if shard[1] > 1 and shard_of(resolved.name, shard[1]) != shard[0]:
            # validated like every target, kept only by the replica whose shard it is
            if resolved.kind == "heartbeat":
                heartbeats.append(resolved)
            continue
        targets.append(sharing.model(resolved))  # type: ignore[arg-type]
        if resolved.kind == "heartbeat":
            heartbeats.append(resolved)

    names = set(first_seen)
    for i, w in enumerate(top.maintenance):
        for j, name in enumerate(w.targets):
            if name not in names and not problems:
                add(("maintenance", i, "targets", j), f'no target is named "{name[:128]}"')
    if problems:
        raise ConfigError(source, sorted(problems, key=by_position))
    return Config(defaults=top.defaults, scheduler=top.scheduler, targets=tuple(targets), source=source,
                  maintenance=tuple(top.maintenance), shard_heartbeats=tuple(heartbeats) if shard[1] > 1 else None)


def _check_family_conflicts(t: TargetConfig, index: int, first: dict[str, tuple[str, str]], add: Any) -> None:
    """One metric name must have one type across all targets, or the exposition is invalid
    (``first``: the type and target each name was first declared with, filled as targets load)."""
    for fam in t.declared_families():
        seen = first.setdefault(fam.name, (fam.type, t.name))
        if seen[0] != fam.type:
            add(("targets", index, "metrics"),
                f'metric {fam.name} is a {fam.type} here but a {seen[0]} in target "{seen[1]}"')


def _resolve(target: TargetConfig, defaults: Defaults) -> TargetConfig | str:
    interval = target.interval if target.interval is not None else defaults.interval
    if target.timeout is not None:
        if target.timeout > interval:
            return (f"timeout {format_duration(target.timeout)} is longer than the interval "
                    f"{format_duration(interval)}; a probe must end before the next one starts")
        timeout = target.timeout
    else:
        # An inherited timeout is clamped: a 1s interval with the default 5s timeout is not an error.
        timeout = min(defaults.timeout, interval)
    if interval <= 0 or timeout <= 0:
        return "interval and timeout must be greater than 0"
    labels = {**defaults.labels, **target.labels} if defaults.labels else target.labels
    # The model was just validated from this file and is not shared yet: fill in the inherited
    # values in place (model_copy costs ~40 us a target, most of a large config's load).
    object.__setattr__(target, "interval", interval)
    object.__setattr__(target, "timeout", timeout)
    object.__setattr__(target, "labels", labels)
    return target


def masked_dump(target: TargetConfig) -> str:
    """The resolved target config as YAML with every secret and URL password masked."""

    data = target.model_dump(mode="python", exclude_none=True)
    first = ("name", "kind", "interval", "timeout", "labels")
    data = {k: mask_tree(data[k]) for k in (*[f for f in first if f in data], *[f for f in data if f not in first])}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


__all__ = [
    "ByteSize",
    "Config",
    "ConfigError",
    "Defaults",
    "Duration",
    "LabelName",
    "Model",
    "Problem",
    "Secret",
    "TargetConfig",
    "load_config",
    "masked_dump",
    "parse_config",
    "read_secret_file",
    "secret_from",
]
