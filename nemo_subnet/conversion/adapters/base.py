"""What every HF family adapter is made of: a config translation and a declarative weight map.

A ``WeightRule`` says which Megatron tensor is made of which HF tensors and how (``Fuse``). Layer rules
use ``{i}`` for the global layer index. Conversion in both directions is derived from the same rules,
so import and export can never disagree.

Megatron layouts the fusions produce (per TP=1 tensor; TP sharding is done later, see sharding.py):
- ``QKV``: ``linear_qkv`` rows grouped per query group g: [q heads of g | k_g | v_g], each head
  ``kv_channels`` rows, from HF's separate q/k/v projections.
- ``GATE_UP``: ``linear_fc1`` rows [gate | up] from HF's gate_proj/up_proj (Megatron's GLU takes
  ``act(first half) * second half``).
- ``VOCAB``: an embedding or output matrix whose rows are padded with zeros to the padded vocabulary.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from nemo_subnet.models.config import ModelConfig


class ExportConstraintError(ValueError):
    """A sub-network shape the family's transformers class cannot hold; the message names the constraint."""


class Fuse(enum.Enum):
    NONE = "none"
    QKV = "qkv"
    GATE_UP = "gate_up"
    VOCAB = "vocab"


@dataclass(frozen=True)
class WeightRule:
    megatron: str
    hf: tuple[str, ...]
    fuse: Fuse = Fuse.NONE
    when: Callable[[ModelConfig], bool] = lambda cfg: True

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.megatron


class FamilyAdapter(ABC):
    """Subclasses set the class attributes and implement the two config translations."""

    model_types: tuple[str, ...] = ()
    """HF ``model_type`` values this adapter reads."""
    hf_architecture: str = ""
    rules: tuple[WeightRule, ...] = ()
    disk_aliases: Mapping[str, str] = {}
    """On-disk HF names that transformers renames in memory (disk name -> in-memory name)."""

    # --- config ---
    @abstractmethod
    def config_from_hf(self, hf_config) -> ModelConfig:
        """Our ModelConfig from a transformers config; ValueError for what the family cannot express."""

    @abstractmethod
    def hf_config_updates(self, cfg: ModelConfig) -> dict:
        """Fields of the HF config.json that the ModelConfig determines (applied over the source's)."""

    def hf_attention_layout(self, hidden: int, query_groups: int, heads_per_group: int, head_dim: int,
                            limit: tuple[int, int] | None = None) -> tuple[int, int]:
        """(query groups, heads per group) of the exported HF model for a sub-network whose widest layer has
        ``query_groups`` x ``heads_per_group`` heads of ``head_dim``: at least as many of each (the extra
        heads are zero, see uniform.py), at most ``limit`` (the super-network's) where the family pads to
        reach a valid layout. ExportConstraintError when the family's config cannot hold it. This one rule
        is what search spaces, sub-network configs and the exporter check."""
        return query_groups, heads_per_group

    def hf_head_layout(self, cfg: ModelConfig) -> tuple[int, int]:
        """``hf_attention_layout`` for a (possibly layer-wise) model: its widest groups and heads per group."""
        sizes = [cfg.layer_sizes(i) for i in range(cfg.num_layers)]
        return self.hf_attention_layout(cfg.hidden_size, max(g for _, g, _ in sizes), max(h // g for h, g, _ in sizes),
                                        cfg.kv_channels)

    # --- weights ---
    def active_rules(self, cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], Fuse]]:
        out = []
        for rule in self.rules:
            if not rule.when(cfg):
                continue
            layers = range(cfg.num_layers) if rule.per_layer else [None]
            for i in layers:
                fmt = {"i": i} if i is not None else {}
                out.append((rule.megatron.format(**fmt), tuple(h.format(**fmt) for h in rule.hf), rule.fuse))
        return out

    def rule_table(self, cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], Fuse]]:
        return {mg_name: (hf_names, fuse) for mg_name, hf_names, fuse in self.active_rules(cfg)}

    def hf_to_megatron(self, cfg: ModelConfig, get_hf: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Global (TP=1, all layers) Megatron state dict from HF tensors fetched by in-memory name."""
        return {mg_name: fuse_tensors(cfg, fuse, [get_hf(name) for name in hf_names])
                for mg_name, hf_names, fuse in self.active_rules(cfg)}

    def megatron_to_hf(self, cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for mg_name, hf_names, fuse in self.active_rules(cfg):
            for name, tensor in zip(hf_names, _split(cfg, fuse, state[mg_name], len(hf_names))):
                out[name] = tensor
        return out


def _qkv_shapes(cfg: ModelConfig) -> tuple[int, int, int]:
    groups = cfg.num_query_groups
    return groups, cfg.num_attention_heads // groups, cfg.kv_channels


def fuse_tensors(cfg: ModelConfig, fuse: Fuse, tensors: list[torch.Tensor]) -> torch.Tensor:
    if fuse is Fuse.NONE:
        (tensor,) = tensors
        return tensor
    if fuse is Fuse.VOCAB:
        (tensor,) = tensors
        if tensor.shape[0] != cfg.vocab_size:
            raise ValueError(f"vocabulary matrix has {tensor.shape[0]} rows, config says vocab_size={cfg.vocab_size}")
        pad = cfg.padded_vocab_size - cfg.vocab_size
        return torch.cat([tensor, tensor.new_zeros(pad, *tensor.shape[1:])]) if pad else tensor
    if fuse is Fuse.GATE_UP:
        return torch.cat(tensors, dim=0)
    # QKV: [g*hpg*d | g*d | g*d] (+ trailing hidden dim for weights) -> per group [hpg*d | d | d]
    groups, heads_per_group, d = _qkv_shapes(cfg)
    q, k, v = tensors
    tail = q.shape[1:]
    q = q.reshape(groups, heads_per_group * d, *tail)
    k = k.reshape(groups, d, *tail)
    v = v.reshape(groups, d, *tail)
    return torch.cat([q, k, v], dim=1).reshape(groups * (heads_per_group + 2) * d, *tail)


def _split(cfg: ModelConfig, fuse: Fuse, tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    if fuse is Fuse.NONE:
        return [tensor]
    if fuse is Fuse.VOCAB:
        return [tensor[: cfg.vocab_size]]
    if fuse is Fuse.GATE_UP:
        return list(tensor.chunk(2, dim=0))
    groups, heads_per_group, d = _qkv_shapes(cfg)
    tail = tensor.shape[1:]
    grouped = tensor.reshape(groups, (heads_per_group + 2) * d, *tail)
    q, k, v = grouped.split([heads_per_group * d, d, d], dim=1)
    return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]


def rope_parameters(hf_config) -> dict:
    """RoPE settings from a transformers config (5.x ``rope_parameters``, older ``rope_theta``/``rope_scaling``)."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "rope_theta", getattr(hf_config, "rotary_emb_base", 10000.0)))
        if hasattr(hf_config, "rotary_pct"):
            params.setdefault("partial_rotary_factor", hf_config.rotary_pct)
    params.setdefault("rope_type", params.pop("type", "default"))
    return params
