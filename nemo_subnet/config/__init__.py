"""The one config mechanism: typed dataclasses <-> YAML, dotted overrides and command-line flags (see typed.py,
files.py, flags.py; allowed ranges and size suffixes in types.py). docs/extending.md, "Add a setting", says how to use it."""

from nemo_subnet.config.flags import add_config_arguments, config_from_arguments
from nemo_subnet.config.files import load, save
from nemo_subnet.config.typed import (ConfigError, apply_overrides, check, from_dict, parse_override, to_dict, typed,
                                      updated)
from nemo_subnet.config.types import (Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                                      Probability, Range, parse_count, parse_size)

__all__ = [
    "ConfigError", "Fraction", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Probability",
    "Range", "add_config_arguments", "apply_overrides", "check", "config_from_arguments", "from_dict", "load",
    "parse_count", "parse_override", "parse_size", "save", "to_dict", "typed", "updated",
]
