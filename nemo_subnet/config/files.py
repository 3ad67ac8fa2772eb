"""Configs as YAML files: ``load`` (a file + dotted overrides, checked) and ``save`` (every field, atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

import yaml

from nemo_subnet.config.typed import ConfigError, apply_overrides, from_dict, to_dict
from nemo_subnet.files import write_text_atomic

T = TypeVar("T")

def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"{path} is not YAML: {str(err).splitlines()[0]}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level"])
    return data


def load(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """A config from a YAML file and dotted overrides (defaults < file < overrides)."""
    return from_dict(cls, apply_overrides(read_yaml(path), overrides), source=str(path))


def save(obj, path: str | Path) -> Path:
    """The config as YAML, every field written (what ran is what the file says), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
