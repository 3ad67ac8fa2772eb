"""The one config mechanism (nemo_subnet/config): types, allowed values, ranges, sizes, rules between fields,
renamed keys, section defaults, every problem at once; flags generated from the same dataclass."""

from __future__ import annotations

import argparse
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterator, Literal

import pytest

from nemo_subnet import config as configs
from nemo_subnet.config import ConfigError, Fraction, PositiveInt, Range, parse_count, parse_size


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    steps: PositiveInt = 10
    """How many steps."""
    share: Fraction = 0.5
    mode: Literal["auto", "on", "off"] = "auto"
    tolerance: Annotated[float, Range(ge=0, lt=1)] = 0.05

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.mode == "on" and self.steps < 3:
            yield "mode", "on needs steps >= 3"


@dataclass
class Outer:
    RENAMED = {"old_steps": "inner.steps", "seed": ("inner.steps", "count")}
    path: Path | None = None
    color: Color = Color.RED
    inner: Inner = field(default_factory=lambda: Inner(steps=20, share=0.25))
    tags: list[str] = field(default_factory=list)
    maybe: Inner | None = None
    either: Inner | Path = Path("x.yaml")
    count: int = 1


def test_types_and_round_trip(tmp_path):
    c = configs.from_dict(Outer, {"path": "a/b", "color": "blue", "inner": {"steps": "4K", "mode": True},
                                  "tags": ["x"], "maybe": {"steps": 3}, "either": {"steps": 2}, "count": "1e3"})
    assert c.path == Path("a/b") and c.color is Color.BLUE and c.inner.steps == 4000 and c.inner.mode == "on"
    assert c.maybe == Inner(steps=3) and c.either == Inner(steps=2) and c.count == 1000
    assert configs.load(Outer, configs.save(c, tmp_path / "c.yaml")) == c
    assert configs.from_dict(Outer, {"either": "y.yaml"}).either == Path("y.yaml")


def test_a_partial_section_keeps_its_defaults_and_old_keys_move():
    c = configs.from_dict(Outer, {"inner": {"mode": "off"}, "old_steps": 7})
    assert (c.inner.steps, c.inner.share, c.inner.mode) == (7, 0.25, "off")  # the factory's share, not Inner's
    fanned = configs.from_dict(Outer, {"seed": 5})
    assert fanned.inner.steps == 5 and fanned.count == 5


def test_every_problem_at_once_named_with_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        configs.from_dict(Outer, {"colr": 1, "color": "green", "inner": {"steps": 0, "share": 1.0, "mode": "maybe"},
                                  "tags": "x", "count": 1.5, "either": 3})
    assert err.value.problems == [
        "colr: unknown key; did you mean color? known keys of the config: path, color, inner, tags, maybe, either, count",
        "color: 'green' is not allowed; allowed: red, blue",
        "inner.steps: 0 is out of range; allowed: >= 1",
        "inner.share: 1.0 is out of range; allowed: > 0 and < 1",
        "inner.mode: 'maybe' is not allowed; allowed: auto, on, off",
        "tags: 'x' is not a list (each a string)",
        "either: 3 is not a mapping (Inner) or a path",
        "count: cannot read 1.5 as an integer",
    ]
    assert str(err.value).startswith("8 problems in the config:\n  colr: unknown key")


def test_rules_between_fields_and_instances_built_in_python():
    with pytest.raises(ConfigError, match=r"^inner.mode: on needs steps >= 3$"):
        configs.check(Outer(inner=Inner(steps=2, mode="on")))
    with pytest.raises(ConfigError, match="inner.tolerance: 1.0 is out of range; allowed: >= 0 and < 1"):
        configs.check(Outer(inner=Inner(tolerance=1.0)))
    # a rule still runs on the valid fields while another field is invalid, not on the invalid ones
    with pytest.raises(ConfigError) as err:
        configs.from_dict(Outer, {"inner": {"steps": 2, "mode": "on", "share": 7}})
    assert err.value.problems == ["inner.share: 7.0 is out of range; allowed: > 0 and < 1",
                                  "inner.mode: on needs steps >= 3"]
    # a section that may be unset (``Inner | None``, ``Inner | Path``) reports its rules too
    with pytest.raises(ConfigError, match=r"^maybe.mode: on needs steps >= 3$"):
        configs.from_dict(Outer, {"maybe": {"steps": 2, "mode": "on"}})
    with pytest.raises(ConfigError, match=r"^either.mode: on needs steps >= 3$"):
        configs.check(Outer(either=Inner(steps=2, mode="on")))
    typed = configs.typed(Outer(color="blue", path="p", count="3"))  # as NeMo-Run's fiddle builds them: text
    assert (typed.color, typed.path, typed.count) == (Color.BLUE, Path("p"), 3)
    assert configs.updated(Outer(), {"inner.steps": 9, "tags": ["a"]}) == Outer(inner=Inner(steps=9, share=0.25),
                                                                                  tags=["a"])


def test_overrides_are_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("inner: {steps: 3}\n")
    c = configs.load(Outer, tmp_path / "c.yaml", ["inner.mode=on", "tags=[a, b]", "path=", "maybe.steps=4"])
    assert (c.inner.steps, c.inner.mode, c.tags, c.path, c.maybe.steps) == (3, "on", ["a", "b"], None, 4)
    with pytest.raises(ConfigError, match="override 'inner.steps' is not KEY=VALUE"):
        configs.load(Outer, tmp_path / "c.yaml", ["inner.steps"])
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        configs.load(Outer, tmp_path / "nope.yaml")


def test_sizes():
    assert parse_size("100B") == 1e11 and parse_size("4M") == 4e6 and parse_size("4Mi") == 4 * 2**20
    assert parse_count("160M") == 160_000_000 and parse_count("1_000") == 1000 and parse_count("8B") == 8 * 10**9
    for bad in ("8X", "-3", "0.5", "inf"):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_flags_are_generated_from_the_dataclass(tmp_path):
    parser = argparse.ArgumentParser()
    configs.add_config_arguments(parser, Outer, aliases={"inner.steps": ["--steps"]})
    help_text = parser.format_help()
    assert "--steps N, --inner.steps N" in help_text and "How many steps. [an integer >= 1] (default: 20)" in help_text
    assert "--color {red,blue}" in help_text and "--maybe.share X" in help_text
    (tmp_path / "c.yaml").write_text("count: 4\ninner: {share: 0.5}\n")
    args = parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--steps", "5K", "--tags", "a", "b",
                              "--inner.mode", "on", "count=6"])
    c = configs.config_from_arguments(Outer, args)
    assert (c.inner.steps, c.inner.share, c.inner.mode, c.tags, c.count) == (5000, 0.5, "on", ["a", "b"], 6)
    with pytest.raises(ConfigError) as err:  # a bad flag value and a missing required field, together
        configs.config_from_arguments(Outer, parser.parse_args(["--color", "green"]), required=("path",))
    assert err.value.problems == ["path: required (give --path, or path: in --config FILE)",
                                  "color: 'green' is not allowed; allowed: red, blue"]
