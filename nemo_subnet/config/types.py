"""Value rules a config field declares in its type: ranges (``Annotated[int, Range(ge=1)]``) and sizes.

A range is part of the field's type, so the one config mechanism (typed.py) checks it wherever the value comes
from: YAML, a dotted override, a command-line flag, or a dataclass built in Python. The aliases below cover the
common cases (``steps: PositiveInt = 10``); ``Range`` writes any other.

Sizes: every int or float field also reads a number with a size suffix, so ``tokens: 100B``,
``max_bytes: 4M`` and ``--budget 160M`` read the way people write them. ``parse_size`` is the one parser
(the planner's ``--tokens`` / ``--student-params`` use it too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12,
             "KI": 2.0**10, "MI": 2.0**20, "GI": 2.0**30, "TI": 2.0**40}


def parse_size(text: str | int | float) -> float:
    """``160e6``, ``410M``, ``8B`` (= 8G), ``100_000``, ``4Mi`` (binary) -> a number; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    t = str(text).strip().upper().replace("_", "")
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if t.endswith(suffix) and t[:-len(suffix)]:
            try:
                return float(t[:-len(suffix)]) * _SUFFIXES[suffix]
            except ValueError:
                break
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a number (e.g. 160e6, 410M, 8B, 4Mi)") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_count(text: str | int | float) -> int:
    """A positive whole count written as ``parse_size`` reads it (``8B`` parameters, ``100B`` tokens)."""
    value = parse_size(text)
    if value <= 0 or not value.is_integer():
        raise ValueError(f"{text!r} must be a positive whole count (e.g. 160e6, 410M, 8B)")
    return int(value)


@dataclass(frozen=True)
class Range:
    """Allowed interval of a number; any bound may be left out."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(gt=0, lt=1)]
"""Strictly between 0 and 1."""
Probability = Annotated[float, Range(ge=0, le=1)]
