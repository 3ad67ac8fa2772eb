"""Which sub-network of a super-network is active: ``SubnetConfig`` and its resolved index form.

Every dimension is a ``Selection``: ``None`` (all), an ``int`` k (the first k, e.g. after the weights
were sorted by importance), or a list of indices (any subset, e.g. top-k by an importance score).

Global dimensions: ``hidden`` (channels of the residual stream) and ``layers`` (which layers run; the
rest are skipped as identity). Per-layer dimensions live in ``LayerSubnet``: ``query_groups`` (K/V
heads; dropping a group drops its K/V head and all its query heads), ``heads_per_group`` (query heads
kept inside each kept group, the same positions in every group) and ``ffn`` (MLP neurons). ``layer``
is either one LayerSubnet for all kept layers (uniform) or a list with one per kept layer, in order.

``check_exportable`` refuses a sub-network the family's transformers class cannot hold (e.g. a Llama
whose hidden size fits no head layout): ``extract`` calls it, so the problem shows before training, not
at export. Search spaces enforce the same rule when they are built (search/space.py).

YAML form::

    hidden: 48
    layers: [0, 1, 3]
    layer: {query_groups: 2, heads_per_group: 1, ffn: [0, 5, 7, 9]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import yaml

from nemo_subnet.files import write_text_atomic
from nemo_subnet.models.config import ModelConfig

Selection = Union[None, int, list[int]]


class SubnetConfigError(ValueError):
    """A sub-network config that does not fit the super-network; the message names the field."""


@dataclass
class LayerSubnet:
    query_groups: Selection = None
    heads_per_group: Selection = None
    ffn: Selection = None


@dataclass
class SubnetConfig:
    hidden: Selection = None
    layers: Selection = None
    layer: LayerSubnet | list[LayerSubnet] = field(default_factory=LayerSubnet)

    def __post_init__(self):
        if isinstance(self.layer, dict):
            self.layer = LayerSubnet(**self.layer)
        elif isinstance(self.layer, list):
            self.layer = [LayerSubnet(**x) if isinstance(x, dict) else x for x in self.layer]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SubnetConfig":
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SubnetConfigError(f"unknown sub-network fields {unknown}; allowed: hidden, layers, layer")
        layer = data.get("layer", {})
        layer_items = layer if isinstance(layer, list) else [layer]
        for i, item in enumerate(layer_items):
            if not isinstance(item, (dict, LayerSubnet)):
                raise SubnetConfigError(f"layer[{i}] must be a mapping with query_groups/heads_per_group/ffn")
            bad = sorted(set(item) - {f.name for f in dataclasses.fields(LayerSubnet)}) if isinstance(item, dict) else []
            if bad:
                raise SubnetConfigError(f"layer[{i}]: unknown fields {bad}; allowed: query_groups, heads_per_group, ffn")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "SubnetConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise SubnetConfigError(f"{path}: a sub-network config must be a mapping")
        return cls.from_dict(data)


@dataclass(frozen=True)
class LayerIndices:
    groups: tuple[int, ...]
    heads_in_group: tuple[int, ...]
    ffn: tuple[int, ...]

    def query_heads(self, heads_per_group: int) -> tuple[int, ...]:
        """Global query-head indices (Megatron orders heads group by group)."""
        return tuple(g * heads_per_group + h for g in self.groups for h in self.heads_in_group)


@dataclass(frozen=True)
class ResolvedSubnet:
    """A SubnetConfig resolved against a ModelConfig: sorted, validated global indices."""

    hidden: tuple[int, ...]
    layers: tuple[int, ...]
    per_layer: tuple[LayerIndices, ...]
    """One entry per kept layer, in the order of ``layers``."""

    def layer(self, global_layer: int) -> LayerIndices | None:
        return self.per_layer[self.layers.index(global_layer)] if global_layer in self.layers else None

    def is_full(self, cfg: ModelConfig) -> bool:
        hpg = cfg.num_attention_heads // cfg.num_query_groups
        return (len(self.hidden) == cfg.hidden_size and len(self.layers) == cfg.num_layers and all(
            len(li.groups) == cfg.num_query_groups and len(li.heads_in_group) == hpg and len(li.ffn) == cfg.ffn_hidden_size
            for li in self.per_layer))


def resolve_selection(selection: Selection, total: int, name: str, unit: str) -> tuple[int, ...]:
    if selection is None:
        return tuple(range(total))
    if isinstance(selection, bool) or not isinstance(selection, (int, list, tuple)):
        raise SubnetConfigError(f"{name}: expected a count or a list of indices, got {selection!r}")
    if isinstance(selection, int):
        if selection < 1:
            raise SubnetConfigError(f"{name}: must keep at least 1 {unit}, got {selection}")
        if selection > total:
            raise SubnetConfigError(f"{name}: {selection} {unit}s requested but the model has {total}")
        return tuple(range(selection))
    indices = list(selection)
    if not indices:
        raise SubnetConfigError(f"{name}: the index list is empty (keep at least 1 {unit})")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise SubnetConfigError(f"{name}: indices must be integers, got {indices}")
    out_of_range = [i for i in indices if not 0 <= i < total]
    if out_of_range:
        raise SubnetConfigError(f"{name}: indices {out_of_range} out of range [0, {total})")
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise SubnetConfigError(f"{name}: duplicated indices {duplicates}")
    return tuple(sorted(indices))


def resolve(cfg: ModelConfig, subnet: SubnetConfig) -> ResolvedSubnet:
    """Validate ``subnet`` against ``cfg``; every error names the offending field."""
    hidden = resolve_selection(subnet.hidden, cfg.hidden_size, "hidden", "channel")
    layers = resolve_selection(subnet.layers, cfg.num_layers, "layers", "layer")
    specs = subnet.layer if isinstance(subnet.layer, list) else [subnet.layer] * len(layers)
    if len(specs) != len(layers):
        raise SubnetConfigError(f"layer: {len(specs)} per-layer entries given for {len(layers)} kept layers "
                                "(give one entry per kept layer, or a single mapping for all)")
    hpg = cfg.num_attention_heads // cfg.num_query_groups
    per_layer = []
    for i, spec in enumerate(specs):
        where = "layer" if not isinstance(subnet.layer, list) else f"layer[{i}]"
        per_layer.append(LayerIndices(
            groups=resolve_selection(spec.query_groups, cfg.num_query_groups, f"{where}.query_groups", "query group"),
            heads_in_group=resolve_selection(spec.heads_per_group, hpg, f"{where}.heads_per_group", "head per group"),
            ffn=resolve_selection(spec.ffn, cfg.ffn_hidden_size, f"{where}.ffn", "neuron"),
        ))
    return ResolvedSubnet(hidden=hidden, layers=layers, per_layer=tuple(per_layer))


def hf_export_problem(cfg: ModelConfig, hidden: int, query_groups: int, heads_per_group: int) -> str | None:
    """Why a sub-network of ``cfg`` with these sizes (its widest layer's groups and heads per group) cannot
    be exported to the family's transformers class, or None. Zero heads the export adds to reach a valid
    layout stay within the super-network's layout (never wider attention than the teacher)."""
    from nemo_subnet.conversion.adapters import adapter_for_family
    from nemo_subnet.conversion.adapters.base import ExportConstraintError

    limit = (cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups)
    try:
        adapter_for_family(cfg.family).hf_attention_layout(hidden, query_groups, heads_per_group, cfg.kv_channels,
                                                           limit=limit)
    except ExportConstraintError as err:
        return str(err)
    return None


def check_exportable(cfg: ModelConfig, sub: ResolvedSubnet) -> None:
    """Raise SubnetConfigError (naming the constraint) when the extracted model cannot be exported to HF.

    The exported model holds every layer at the widest layer's groups and heads per group (zero-padded),
    so those and the hidden size are what the family's rule sees."""
    groups = max(len(li.groups) for li in sub.per_layer)
    heads_per_group = max(len(li.heads_in_group) for li in sub.per_layer)
    problem = hf_export_problem(cfg, len(sub.hidden), groups, heads_per_group)
    if problem:
        raise SubnetConfigError(f"sub-network cannot be exported to HF (hidden={len(sub.hidden)}, widest layer "
                                f"query_groups={groups} x heads_per_group={heads_per_group}): {problem}")
