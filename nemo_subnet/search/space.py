"""Search spaces (YAML) and the parameter budget; candidates as integer genomes over allowed choices.

The four granularities of the paper (whittle): coarse / fine choices x uniform / layer-wise sizes::

    granularity: fine_layerwise     # coarse_uniform | fine_uniform | coarse_layerwise | fine_layerwise
    ordering: importance            # importance (needs --scores) | first_k
    hidden: [32, 48, 64]            # allowed values; omitted -> defaults of the granularity
    layers: [2, 3, 4]               # number of kept layers
    query_groups: [1, 2]
    heads_per_group: [1, 2]
    ffn: [32, 64, 96]
    round_to: 8                     # default hidden / ffn choices are multiples of this
    budget: {target: 0.33, tolerance: 0.05}   # optional here; the CLI's --budget overrides

Default choices: coarse = {1/4, 1/2, 3/4, 1} of the model's size, fine = every 1/16 (hidden, ffn) and
every count (layers, query groups, heads per group). Uniform: one (query_groups, heads_per_group, ffn)
for all kept layers; layer-wise: one per kept layer.

Every candidate a space allows must export to the family's transformers class (checked when the space
is resolved against the model, with the exporter's own rule ``FamilyAdapter.hf_attention_layout``):
every (hidden, query_groups, heads_per_group) combination of the choices must fit, since a layer-wise
candidate's widest layer can take any pair. Explicit choices that break it fail with the constraint
named; default hidden choices that break it are left out. Per family:
- Llama: hidden_size % num_attention_heads == 0 (the export may add zero heads to reach a divisor);
- Qwen2 / Qwen3: no constraint (explicit head_dim);
- GPT-NeoX: attention is hidden_size wide, head size = hidden_size / heads, so hidden must be a multiple
  of the head size d and heads x d <= hidden. Default: ``query_groups: tied`` -- heads follow the hidden
  size (hidden / d heads, the family's own design, no padding at export); explicit head choices must
  satisfy heads x d <= hidden for every hidden choice.
Depth needs no constraint: the exporter writes per-layer config lists for the kept layers.

Genome: ``(hidden, layers, [query_groups, heads_per_group, ffn] x slots)`` as indices into the choice
lists; ``slots`` is 1 (uniform) or the largest layer count (layer-wise; slot i sizes the i-th kept layer,
slots beyond the kept layers are inactive). ``key()`` is the active part, so genomes that differ only in
inactive slots are the same candidate.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from nemo_subnet.config import PositiveFloat, PositiveInt, Range

from nemo_subnet.models.config import Family, ModelConfig
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig, hf_export_problem
from nemo_subnet.models.counting import count_parameters
from nemo_subnet.subnet.params import subnet_parameters

Genome = tuple[int, ...]
DIMENSIONS = ("hidden", "layers", "query_groups", "heads_per_group", "ffn")
PER_LAYER = ("query_groups", "heads_per_group", "ffn")
TIED = "tied"
"""``query_groups: tied`` (GPT-NeoX): a candidate's heads are hidden / head size, like the family's models."""


class SearchSpaceError(ValueError):
    """A space or budget that cannot work with the model; the message names the field."""


class Granularity(str, enum.Enum):
    COARSE_UNIFORM = "coarse_uniform"
    FINE_UNIFORM = "fine_uniform"
    COARSE_LAYERWISE = "coarse_layerwise"
    FINE_LAYERWISE = "fine_layerwise"

    @property
    def layerwise(self) -> bool:
        return self.value.endswith("layerwise")

    @property
    def fine(self) -> bool:
        return self.value.startswith("fine")


class Ordering(str, enum.Enum):
    FIRST_K = "first_k"
    """Keep the first k units of every dimension."""
    IMPORTANCE = "importance"
    """Keep the k most important units (importance scores needed)."""


@dataclass
class Budget:
    target: PositiveFloat
    """Parameters of the sub-network: a fraction of the super-network's if <= 1, else an absolute count (``160M``)."""
    tolerance: Annotated[float, Range(ge=0, lt=1)] = 0.05
    """Accepted relative deviation: params in [target * (1 - tol), target * (1 + tol)]."""

    def bounds(self, total: int) -> tuple[int, int]:
        if self.target <= 0:
            raise SearchSpaceError(f"budget target must be positive, got {self.target}")
        if not 0 <= self.tolerance < 1:
            raise SearchSpaceError(f"budget tolerance must be in [0, 1), got {self.tolerance}")
        target = self.target * total if self.target <= 1 else self.target
        return int(target * (1 - self.tolerance)), int(target * (1 + self.tolerance) + 0.5)


@dataclass
class BudgetFamily:
    """Several budgets searched at once: one importance pass, one run, the best sub-network per budget
    (``best_<target>.yaml``); the strategy keeps an elite and a fidelity ladder per budget."""

    targets: list[PositiveFloat]
    """Parameters of each sub-network, as ``Budget.target``: fractions (``[0.25, 0.33, 0.5]``) or counts."""
    tolerance: Annotated[float, Range(ge=0, lt=1)] = 0.05
    """Accepted relative deviation around every target; the bands must not overlap."""

    def problems(self):
        if not self.targets:
            yield "targets", "empty; give one target or more (e.g. [0.25, 0.5])"
        elif len(set(self.targets)) < len(self.targets):
            yield "targets", f"{self.targets} repeats a target; give each once"

    def budgets(self) -> list[Budget]:
        return [Budget(target, self.tolerance) for target in self.targets]


@dataclass
class SearchSpace:
    granularity: Granularity = Granularity.FINE_LAYERWISE
    ordering: Ordering = Ordering.IMPORTANCE
    hidden: list[int] | None = None
    layers: list[int] | None = None
    query_groups: list[int] | str | None = None
    """Or ``tied`` (GPT-NeoX, its default): heads = hidden / head size."""
    heads_per_group: list[int] | None = None
    ffn: list[int] | None = None
    round_to: PositiveInt = 1
    """Default hidden / ffn choices are multiples of this (e.g. 8 or 64 for fast kernels, tp for TP)."""
    budget: Budget | None = None

    def __post_init__(self):
        self.granularity = Granularity(self.granularity)
        self.ordering = Ordering(self.ordering)
        if isinstance(self.budget, dict):
            self.budget = Budget(**self.budget)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "search space") -> "SearchSpace":
        """Through the one config mechanism (every problem at once), as a ``SearchSpaceError``."""
        from nemo_subnet import config

        try:
            return config.from_dict(cls, data, source=source)
        except config.ConfigError as err:
            raise SearchSpaceError(str(err)) from None

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        from nemo_subnet.config import ConfigError
        from nemo_subnet.config.files import read_yaml

        try:
            data = read_yaml(path)
        except ConfigError as err:
            raise SearchSpaceError(str(err)) from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict:
        out = {"granularity": self.granularity.value, "ordering": self.ordering.value, "round_to": self.round_to}
        out.update({d: getattr(self, d) for d in DIMENSIONS if getattr(self, d) is not None})
        if self.budget is not None:
            out["budget"] = {"target": self.budget.target, "tolerance": self.budget.tolerance}
        return out


def _default_choices(total: int, fine: bool, step: int, is_count: bool) -> list[int]:
    if is_count and fine:
        return list(range(1, total + 1))
    fractions = [i / 16 for i in range(1, 17)] if fine else [0.25, 0.5, 0.75, 1.0]
    step = 1 if is_count else max(step, 1)
    values = {max(step, int(round(f * total / step)) * step) for f in fractions}
    return sorted(v for v in values if v <= total) or [total]


@dataclass
class ResolvedSpace:
    """A space checked against a model: choice lists per dimension, genome helpers, parameter counts."""

    cfg: ModelConfig
    space: SearchSpace
    choices: dict[str, list[int]]
    slots: int
    _params: dict = field(default_factory=dict, repr=False)

    @property
    def layerwise(self) -> bool:
        return self.space.granularity.layerwise

    @property
    def genome_length(self) -> int:
        return 2 + 3 * self.slots

    def gene_choices(self, i: int) -> list[int]:
        return self.choices[DIMENSIONS[i] if i < 2 else PER_LAYER[(i - 2) % 3]]

    def active_genes(self, genome: Genome) -> list[int]:
        n_slots = self.choices["layers"][genome[1]] if self.layerwise else 1
        return list(range(2 + 3 * n_slots))

    def key(self, genome: Genome) -> Genome:
        return tuple(genome[i] for i in self.active_genes(genome))

    def sizes(self, genome: Genome) -> SubnetConfig:
        """The candidate as counts (first-k form); what parameter counts and FLOPs depend on."""
        hidden = self.gene_choices(0)[genome[0]]

        def value(i: int) -> int:
            chosen = self.gene_choices(i)[genome[i]]
            return hidden // self.cfg.kv_channels if chosen == TIED else chosen

        n_layers = value(1)
        per_layer = [LayerSubnet(value(2 + 3 * s), value(3 + 3 * s), value(4 + 3 * s))
                     for s in range(n_layers if self.layerwise else 1)]
        return SubnetConfig(hidden=value(0), layers=n_layers, layer=per_layer if self.layerwise else per_layer[0])

    def subnet(self, genome: Genome, scores=None, layer_metric=None) -> SubnetConfig:
        """The candidate's sub-network: first-k, or importance-ordered when the space says so."""
        sizes = self.sizes(genome)
        if self.space.ordering is Ordering.FIRST_K:
            return sizes
        from nemo_subnet.importance.scores import LayerMetric, importance_ordered

        if scores is None:
            raise SearchSpaceError("ordering: importance needs importance scores (--scores; or use ordering: first_k)")
        return importance_ordered(self.cfg, sizes, scores, layer_metric=layer_metric or LayerMetric.COSINE)

    def params(self, genome: Genome) -> int:
        key = self.key(genome)
        if key not in self._params:
            self._params[key] = subnet_parameters(self.cfg, self.sizes(genome))
        return self._params[key]

    def extreme(self, largest: bool) -> Genome:
        return tuple(len(self.gene_choices(i)) - 1 if largest else 0 for i in range(self.genome_length))

    def enumerate(self) -> list[Genome]:
        """Every distinct candidate (inactive slots 0), in a fixed order; only sensible for small spaces."""
        import itertools

        out = []
        per_slot = [range(len(self.choices[d])) for d in PER_LAYER]
        for li, n_layers in enumerate(self.choices["layers"]):
            n_slots = n_layers if self.layerwise else 1
            for hidden in range(len(self.choices["hidden"])):
                for slots in itertools.product(*(per_slot * n_slots)):
                    out.append((hidden, li, *slots) + (0,) * (3 * (self.slots - n_slots)))
        return out

    def total_params(self) -> int:
        return count_parameters(self.cfg)

    def size(self) -> int:
        """Number of distinct candidates (sum over layer counts for layer-wise spaces)."""
        per = 1
        for d in PER_LAYER:
            per *= len(self.choices[d])
        n = len(self.choices["hidden"])
        if not self.layerwise:
            return n * len(self.choices["layers"]) * per
        return n * sum(per ** k for k in self.choices["layers"])


def resolve_space(space: SearchSpace, cfg: ModelConfig) -> ResolvedSpace:
    """Fill default choices and check every choice against the model (errors name the dimension)."""
    totals = {"hidden": cfg.hidden_size, "layers": cfg.num_layers, "query_groups": cfg.num_query_groups,
              "heads_per_group": cfg.num_attention_heads // cfg.num_query_groups, "ffn": cfg.ffn_hidden_size}
    if space.query_groups == TIED and cfg.family is not Family.GPT_NEOX:
        raise SearchSpaceError(f"query_groups: tied is for gpt_neox (heads follow the hidden size); this model is "
                               f"{cfg.family.value}: give a list of query-group counts or omit it")
    tied = space.query_groups == TIED or (space.query_groups is None and cfg.family is Family.GPT_NEOX)
    choices = {}
    for dim in DIMENSIONS:
        given = getattr(space, dim)
        total = totals[dim]
        if dim == "query_groups" and tied:
            choices[dim] = [TIED]
            continue
        if given is None:
            # tied heads need hidden sizes that are whole heads
            step = math.lcm(max(space.round_to, 1), cfg.kv_channels) if dim == "hidden" and tied else space.round_to
            choices[dim] = _default_choices(total, space.granularity.fine, step, dim not in ("hidden", "ffn"))
            continue
        if not isinstance(given, list) or not given or any(isinstance(v, bool) or not isinstance(v, int) for v in given):
            also = " (or tied, for gpt_neox)" if dim == "query_groups" else ""
            raise SearchSpaceError(f"{dim}: expected a non-empty list of integers{also}, got {given!r}")
        bad = [v for v in given if not 1 <= v <= total]
        if bad:
            raise SearchSpaceError(f"{dim}: choices {bad} exceed the model (it has {total}; allowed 1..{total})")
        choices[dim] = sorted(set(given))
    defaults = choices["hidden"]
    choices["hidden"] = _exportable_hidden(cfg, choices, explicit_hidden=space.hidden is not None)
    if space.hidden is None and len(defaults) > 1 and choices["hidden"] == [cfg.hidden_size]:
        _refuse_unsearchable_hidden(cfg, space, choices)
    slots = max(choices["layers"]) if space.granularity.layerwise else 1
    return ResolvedSpace(cfg=cfg, space=space, choices=choices, slots=slots)


def _head_pairs(cfg: ModelConfig, choices: dict, hidden: int) -> list[tuple[int, int]]:
    """(query_groups, heads_per_group) pairs a candidate's widest layer can have at this hidden size."""
    if choices["query_groups"] == [TIED]:
        return [(hidden // cfg.kv_channels, p) for p in choices["heads_per_group"]]
    return list(itertools.product(choices["query_groups"], choices["heads_per_group"]))


def _exportable_hidden(cfg: ModelConfig, choices: dict, explicit_hidden: bool) -> list[int]:
    """The hidden choices, after checking every (hidden, groups, heads per group) combination exports.

    Default hidden choices that fail are dropped; explicit ones (and a space with nothing left) raise."""
    failures: dict[int, list[tuple[tuple[int, int], str]]] = {}
    total = 0
    for hidden in choices["hidden"]:
        for groups, heads_per_group in _head_pairs(cfg, choices, hidden):
            total += 1
            problem = hf_export_problem(cfg, hidden, groups, heads_per_group)
            if problem:
                failures.setdefault(hidden, []).append(((groups, heads_per_group), problem))
    kept = [h for h in choices["hidden"] if h not in failures]
    if not failures or (kept and not explicit_hidden):
        return kept
    first_hidden, first = next(iter(failures.items()))
    (groups, heads_per_group), err = first[0]
    n_failed = sum(len(v) for v in failures.values())
    heads = "tied heads" if choices["query_groups"] == [TIED] else f"query_groups={groups} x heads_per_group={heads_per_group}"
    hints = [f"hidden choices that export with every head choice: {kept}" if kept else
             "no hidden choice exports with every head choice"]
    if choices["query_groups"] != [TIED]:
        pairs = [pair for pair in _head_pairs(cfg, choices, 0)
                 if not any(pair == bad for fails in failures.values() for bad, _ in fails)]
        hints.append(f"(query_groups, heads_per_group) pairs that export with every hidden choice: {pairs}")
    raise SearchSpaceError(
        f"search space not exportable to HF {cfg.family.value}: hidden={first_hidden} with {heads} "
        f"({n_failed} of {total} hidden x query_groups x heads_per_group combinations fail): {err}. Every "
        f"combination the choices allow must export; {'; '.join(hints)}")


def _refuse_unsearchable_hidden(cfg: ModelConfig, space: SearchSpace, choices: dict) -> None:
    """round_to left no default hidden size below the model's that exports (e.g. 9 heads, round_to 64: Llama needs
    hidden % heads == 0, so only 576 = 9 x 64 is left): the hidden size would silently not be searched, and the
    budget met by cutting layers, heads and neurons alone. Refused, naming the round_to values that work."""
    options = []
    for step in (d for d in range(space.round_to - 1, 0, -1) if space.round_to % d == 0):
        grid = math.lcm(step, cfg.kv_channels) if choices["query_groups"] == [TIED] else step  # as resolve_space
        defaults = _default_choices(cfg.hidden_size, space.granularity.fine, grid, is_count=False)
        kept = _exportable_hidden(cfg, {**choices, "hidden": defaults}, explicit_hidden=False)
        if len(kept) > 1:
            options.append(f"round_to {step}: hidden {kept}")
        if len(options) == 2:
            break
    raise SearchSpaceError(
        f"search space: with round_to {space.round_to} no hidden size below the model's {cfg.hidden_size} exports to HF "
        f"{cfg.family.value} with every head choice ({cfg.num_query_groups} query groups x "
        f"{cfg.num_attention_heads // cfg.num_query_groups} heads per group; transformers needs hidden_size % heads == 0), "
        f"so the hidden size could not be searched; use {'; '.join(options) or 'round_to 1'}, or list hidden choices")


def check_budget(rspace: ResolvedSpace, budget: Budget) -> tuple[int, int]:
    """(lower, upper) parameter bounds; raises SearchSpaceError when the space cannot reach them."""
    total = rspace.total_params()
    lower, upper = budget.bounds(total)
    smallest, largest = rspace.params(rspace.extreme(False)), rspace.params(rspace.extreme(True))
    if upper < smallest or lower > largest:
        raise SearchSpaceError(
            f"budget unreachable: the space spans {smallest:,}..{largest:,} parameters but the budget asks for "
            f"{lower:,}..{upper:,} ({budget.target:g}{' of ' + format(total, ',') if budget.target <= 1 else ''} "
            f"+-{budget.tolerance:.0%}): change the budget or the space's choices")
    return lower, upper
