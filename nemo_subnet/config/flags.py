"""Command-line flags generated from a config dataclass, so a command's flags and its ``--config`` file are one thing.

``add_config_arguments(parser, SearchConfig, aliases={...})`` adds, for every leaf field of the tree:

- a flag named by its dotted path (``--eval.seq-length``; ``_`` written ``-``), plus any short names the command
  has always had (``--seq-length``); booleans as ``--x / --no-x``; lists take several values;
- the field's docstring as its help, with its type and default;

and ``--config FILE`` (a YAML of the same dataclass: what a pipeline stage hands its child) and positional
``KEY=VALUE`` overrides. ``config_from_arguments`` merges defaults < ``--config`` < flags < overrides and converts
with the one mechanism (typed.py): every problem, a bad flag value included, is reported at once. A field added
to the dataclass gets its flag, its YAML key and its checks without touching the command.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import functools
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Literal, Mapping, Sequence, TypeVar

import yaml

from nemo_subnet.config.files import read_yaml
from nemo_subnet.config.typed import (ConfigError, _merged, apply_overrides, describe_type, field_types, from_dict,
                                      optional_arm, set_path, to_dict, unwrap)

T = TypeVar("T")
_DEST = "config:"


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """{field: the docstring written under it} (empty where the source cannot be read)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, following in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
                docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: str
    hint: object
    doc: str
    default: object


def leaves(cls: type, prefix: str = "", defaults: dict | None = None) -> list[Leaf]:
    """Every settable field of the tree; nested dataclasses (also ``X | None``) are walked into. A section's
    defaults are its parent's default instance's values (a pipeline section's own defaults, not the class's)."""
    out: list[Leaf] = []
    docs = field_docs(cls)
    defaults = _defaults(cls) if defaults is None else defaults
    for name, hint in field_types(cls).items():
        inner = optional_arm(hint) or unwrap(hint)[0]
        default = defaults.get(name, dataclasses.MISSING)
        if dataclasses.is_dataclass(inner):
            section = ({f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}
                       if isinstance(default, inner) else None)
            out += leaves(inner, f"{prefix}{name}.", section)
        else:
            out.append(Leaf(prefix + name, hint, docs.get(name, ""), default))
    return out


def _defaults(cls: type) -> dict:
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def _kind(hint) -> tuple[object, bool]:
    """(the scalar type behind Optional / Annotated, whether it is a list)."""
    inner = optional_arm(hint) or unwrap(hint)[0]
    inner = unwrap(inner)[0]
    if typing.get_origin(inner) in (list, tuple):
        return unwrap((typing.get_args(inner) or (str,))[0])[0], True
    return inner, False


def _choices(kind) -> list[str] | None:
    if typing.get_origin(kind) is Literal:
        return [str(a) for a in typing.get_args(kind)]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [str(m.value) for m in kind]
    return None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, aliases: Mapping[str, Sequence[str]] = (),
                         hidden: Sequence[str] = ()) -> None:
    """Flags for every leaf of ``cls`` (see the module docstring); ``hidden`` leaves get no flag of their own
    (they stay settable by ``--config`` and overrides)."""
    aliases = dict(aliases)
    unknown = set(aliases) - {leaf.path for leaf in leaves(cls)}
    if unknown:
        raise ValueError(f"aliases for fields {cls.__name__} does not have: {sorted(unknown)}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"YAML of every setting ({cls.__name__}); flags and KEY=VALUE overrides win over it")
    group = parser.add_argument_group("settings", "each also a key of --config FILE and of KEY=VALUE overrides")
    for leaf in leaves(cls):
        if leaf.path in hidden:
            continue
        kind, is_list = _kind(leaf.hint)
        names = [*aliases.get(leaf.path, ()), _flag(leaf.path)]
        default = "" if leaf.default is dataclasses.MISSING else f" (default: {_show(leaf.default)})"
        help_text = (leaf.doc + " " if leaf.doc else "") + f"[{describe_type(leaf.hint)}]{default}"
        kwargs = dict(dest=_DEST + leaf.path, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if kind is bool and not is_list:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        choices = _choices(kind)
        metavar = "{" + ",".join(choices) + "}" if choices else {int: "N", float: "X", Path: "PATH"}.get(kind, "VALUE")
        group.add_argument(*names, nargs="+" if is_list else None, metavar=metavar, **kwargs)
    example = next((leaf for leaf in leaves(cls) if "." in leaf.path), leaves(cls)[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"dotted overrides of any setting, values parsed as YAML (e.g. {example.path}=...)")


def _show(value) -> str:
    plain = to_dict(value)
    return "none" if plain is None else (yaml.safe_dump(plain, default_flow_style=True).strip() if isinstance(
        plain, (dict, list)) else str(plain))


def config_from_arguments(cls: type[T], args: argparse.Namespace, *, required: Sequence[str] = (),
                          flag_names: Mapping[str, str] = (), base: T | None = None) -> T:
    """The config of a parsed command line: defaults < ``base`` < --config FILE < flags < KEY=VALUE overrides
    (``base``: a config the command derived from another file, e.g. teacher-cache's --for-run).
    ``required`` dotted fields must end up set; ConfigError lists every problem at once."""
    data = read_yaml(args.config) if getattr(args, "config", None) else {}
    if base is not None:
        data = _merged(to_dict(base), data)
    for dest, raw in vars(args).items():
        if dest.startswith(_DEST):
            path = dest[len(_DEST):]
            set_path(data, path, raw)  # text: converted as its field's type (typed.py), checked with the rest
    apply_overrides(data, getattr(args, "overrides", None) or ())
    problems = []
    for path in required:
        node = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            flag = dict(flag_names).get(path, _flag(path))
            problems.append(f"{path}: required (give {flag}, or {path}: in --config FILE)")
    try:
        config = from_dict(cls, data)
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems)
    return config
