"""Plain data (YAML, dotted overrides, flags) <-> typed config dataclasses, every problem reported at once.

The one mechanism behind every stage's config (train, data, importance, search, extract, the pipeline, the
study, the launch settings). A config is a tree of dataclasses whose field types say what is allowed:

- text given where another type is declared (flags, NeMo-Run's command line) is read as YAML first;
- ``int``, ``float`` (a size suffix is read too: ``100B``), ``bool``, ``str``, ``Path``, ``list[T]``,
  ``dict[str, T]``, ``X | None``, unions (``SearchSpace | Path``: a mapping builds the dataclass, a string
  the path), nested dataclasses;
- ``Literal[...]`` and ``Enum`` members (by value), named in the error with what is allowed;
- ranges in the type, ``Annotated[int, Range(ge=1)]`` or the aliases of types.py (``PositiveInt``);
- cross-field rules: a dataclass may define ``problems(self)`` yielding ``(field, message)`` pairs; it runs
  once the section's own fields are valid, and the field is named with its full dotted path (field None: the
  message names the fields itself and is prefixed with the section's path only);
- renamed keys: a dataclass may map old dotted keys to new ones (one or several) in a ``RENAMED`` class
  attribute; old YAML files and overrides keep working.

``from_dict`` converts and checks the whole tree and raises one ``ConfigError`` (a ``UserError``) listing every
problem, each naming its field and what is allowed. ``check(obj)`` does the same for a dataclass built in
Python (it round-trips the instance through ``to_dict``). files.py reads and writes them as YAML (defaults <
file < overrides, as in torchtitan's ``ConfigManager``).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, TypeVar

import yaml

from nemo_subnet.config.types import Range, parse_size
from nemo_subnet.errors import UserError

T = TypeVar("T")
_INVALID = object()


class ConfigError(UserError):
    """Every problem of a config, one line each (``field: what is wrong; allowed: ...``)."""

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            message = f"{head}{len(self.problems)} problems in the config:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


# --------------------------------------------------------------------------------------------- type hints
@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """{field: resolved type (Annotated kept)} of the dataclass's init fields."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def unwrap(hint) -> tuple[Any, list]:
    """(type without Annotated, its metadata)."""
    if typing.get_origin(hint) is typing.Annotated:
        base, *meta = typing.get_args(hint)
        inner, more = unwrap(base)
        return inner, meta + more
    return hint, []


def _union_arms(hint) -> list | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(typing.get_args(hint))
    return None


def optional_arm(hint):
    """``X`` of ``X | None`` (None for any other type)."""
    arms = _union_arms(unwrap(hint)[0])
    if arms and type(None) in arms:
        rest = [a for a in arms if a is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return None


def describe_type(hint) -> str:
    hint, meta = unwrap(hint)
    ranges = [m.describe() for m in meta if isinstance(m, Range)]
    if ranges:
        return f"{describe_type(hint)} {' and '.join(ranges)}"
    arms = _union_arms(hint)
    if arms:
        return " or ".join(describe_type(a) for a in arms)
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    if dataclasses.is_dataclass(hint):
        return f"a mapping ({hint.__name__})"
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return f"a list (each {describe_type(typing.get_args(hint)[0])})" if typing.get_args(hint) else "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}.get(
        hint, getattr(hint, "__name__", str(hint)))


# ------------------------------------------------------------------------------------------- conversion
def _convert(hint, value, where: str, errors: list[str]):
    """``value`` as ``hint``; on a problem, append it to ``errors`` and return _INVALID."""
    hint, meta = unwrap(hint)
    arms = _union_arms(hint)
    if arms:
        if value is None:
            if type(None) in arms:
                return None
            errors.append(f"{where}: required (expected {describe_type(hint)})")
            return _INVALID
        for arm in (a for a in arms if a is not type(None)):
            if dataclasses.is_dataclass(arm) and not isinstance(value, Mapping) and not isinstance(value, arm):
                continue
            attempt: list[str] = []
            converted = _convert(arm, value, where, attempt)
            if converted is not _INVALID:
                errors.extend(attempt)  # a dataclass arm that read but broke one of its rules (``problems``)
                return converted
            if len([a for a in arms if a is not type(None)]) == 1 or dataclasses.is_dataclass(arm):
                errors.extend(attempt)  # X | None, or a mapping for the dataclass arm: its own messages are precise
                return _INVALID
        errors.append(f"{where}: {value!r} is not {describe_type(hint)}")
        return _INVALID
    if isinstance(value, str) and hint not in (str, Path, Any, object):
        value = _text_value(value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            value = to_dict(value)
        return _build(hint, value, where, errors)
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if not any(value == a and type(value) is type(a) for a in allowed):
            errors.append(f"{where}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
            return _INVALID
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value.value if isinstance(value, enum.Enum) else value)
        except ValueError:
            errors.append(f"{where}: {value!r} is not allowed; allowed: {', '.join(str(m.value) for m in hint)}")
            return _INVALID
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{where}: {value!r} is not {describe_type(hint)}")
            return _INVALID
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]", errors) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else (tuple(items) if origin is tuple else items)
    if origin is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{where}: {value!r} is not a mapping")
            return _INVALID
        args = typing.get_args(hint)
        item = args[1] if len(args) == 2 else Any
        out = {k: _convert(item, v, f"{where}.{k}", errors) for k, v in value.items()}
        return _INVALID if _INVALID in out.values() else out
    converted = _scalar(hint, value, where, errors)
    if converted is not _INVALID:
        for rule in meta:
            if isinstance(rule, Range) and not rule.admits(converted):
                errors.append(f"{where}: {converted!r} is out of range; allowed: {rule.describe()}")
                return _INVALID
    return converted


def _text_value(text: str):
    """Text where another type is declared (a flag, NeMo-Run's command line) is read as YAML, like a dotted
    override: ``3``, ``1e-3``, ``[a, b]``, ``none``; anything YAML cannot read stays text for the converter."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _scalar(hint, value, where: str, errors: list[str]):
    if hint is Any or hint is object:
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if hint in (int, float):
            if isinstance(value, bool):
                raise ValueError
            number = parse_size(value)
            if hint is int:
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return number
        if hint is str:
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError
            return str(value)
        if hint is Path:
            if not isinstance(value, (str, Path)):
                raise ValueError
            return Path(value)
    except (TypeError, ValueError):
        errors.append(f"{where}: cannot read {value!r} as {describe_type(hint)}")
        return _INVALID
    return value


def _apply_renames(cls: type, data: dict) -> dict:
    renamed = getattr(cls, "RENAMED", None)
    if not renamed:
        return data
    data = dict(data)
    for old, new in renamed.items():
        found, value = pop_path(data, old)
        if found:
            for target in (new,) if isinstance(new, str) else new:
                set_path(data, target, value)
    return data


def _build(cls: type, data, where: str, errors: list[str]):
    if not isinstance(data, Mapping):
        errors.append(f"{where or 'config'}: expected a mapping ({cls.__name__}), got {data!r}")
        return _INVALID
    data = _apply_renames(cls, dict(data))
    hints = field_types(cls)
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in hints]
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(hints), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        errors.append(f"{prefix}{key}: unknown key; {hint}known keys of {where or 'the config'}: {', '.join(hints)}")
    kwargs, invalid = {}, set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in data:
            value = data[f.name]
            default = _default(f)
            if isinstance(value, Mapping) and dataclasses.is_dataclass(default) and not isinstance(default, type):
                value = _merged(to_dict(default), value)  # a section's own defaults < what the file gives
            kwargs[f.name] = _convert(hints[f.name], value, prefix + f.name, errors)
            if kwargs[f.name] is _INVALID:
                invalid.add(f.name)
                if _has_default(f):
                    kwargs[f.name] = _default(f)  # stands in, so the rules between the valid fields still run
        elif not _has_default(f):
            errors.append(f"{prefix}{f.name}: required ({describe_type(hints[f.name])})")
            invalid.add(f.name)
    try:
        instance = cls(**{k: v for k, v in kwargs.items() if v is not _INVALID})
    except (TypeError, ValueError) as err:
        if not invalid:
            errors.append(f"{where or cls.__name__}: {err}")
        return _INVALID
    rules = getattr(instance, "problems", None)
    for name, message in rules() if callable(rules) else ():
        if not name and not invalid:
            errors.append((f"{where}: " if where else "") + message)
        elif name and name.split(".")[0] not in invalid:  # a rule on a field that did not read is no news
            errors.append(f"{prefix}{name}: {message}")
    return _INVALID if unknown or invalid else instance


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _merged(base: dict, given: Mapping) -> dict:
    """``given`` over ``base``, mappings merged key by key (a partial section keeps the rest of its defaults)."""
    out = dict(base)
    for key, value in given.items():
        out[key] = _merged(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def from_dict(cls: type[T], data: Mapping, *, source: str | None = None) -> T:
    """The dataclass ``cls`` from plain data; ConfigError listing every problem."""
    errors: list[str] = []
    instance = _build(cls, data if data is not None else {}, "", errors)
    if errors:
        raise ConfigError(errors, source)
    return instance


def check(obj, *, also: Iterable[tuple[str | None, str]] = (), source: str | None = None) -> None:
    """Raise ConfigError listing every problem of a config built in Python (types, allowed values, ranges,
    cross-field rules: the same checks as loading it from YAML), and the ``(field, message)`` pairs ``also``
    gives (what a caller requires beyond them, e.g. fields that must be set to run)."""
    problems = [f"{name}: {message}" if name else message for name, message in also]
    try:
        typed(obj)
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems, source)


def typed(obj: T) -> T:
    """A config built elsewhere (in Python, or by NeMo-Run's fiddle from command-line strings) read again
    through the mechanism: every value of its declared type, every rule checked."""
    return from_dict(type(obj), to_dict(obj))


def to_dict(value):
    """Plain YAML-able data: dataclasses as mappings, enums as their values, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    return value


def updated(obj: T, changes: Mapping[str, Any]) -> T:
    """A copy of ``obj`` with dotted fields set (``{"schedule.train_steps": 12}``), checked like a loaded file."""
    data = to_dict(obj)
    for key, value in changes.items():
        set_path(data, key, to_dict(value))
    return from_dict(type(obj), data)


# ---------------------------------------------------------------------------------------- dotted paths
def set_path(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if node.get(part) is not None:
                raise ConfigError([f"{dotted}: {part} is not a section"])
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def pop_path(data: dict, dotted: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key, removed; sections it leaves empty are removed too."""
    parts = dotted.split(".")
    nodes = [data]
    for part in parts[:-1]:
        node = nodes[-1].get(part) if isinstance(nodes[-1], dict) else None
        if not isinstance(node, dict):
            return False, None
        nodes.append(node)
    if parts[-1] not in nodes[-1]:
        return False, None
    value = nodes[-1].pop(parts[-1])
    for parent, part, node in reversed(list(zip(nodes, parts, nodes[1:]))):
        if not node:
            parent.pop(part)
    return True, value


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=VALUE`` -> ("a.b", VALUE parsed as YAML; an empty value is null)."""
    if "=" not in item:
        raise ConfigError([f"override {item!r} is not KEY=VALUE"])
    key, text = item.split("=", 1)
    try:
        return key.strip(), (yaml.safe_load(text) if text != "" else None)
    except yaml.YAMLError as err:
        raise ConfigError([f"override {item!r}: the value is not YAML ({str(err).splitlines()[0]})"]) from None


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """``["a.b=1", ...]`` set onto nested plain data (in place; returned)."""
    for item in overrides:
        set_path(data, *parse_override(item))
    return data
