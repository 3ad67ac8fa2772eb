"""Seeded random sub-network configs of the four kinds: size-only / index-set x uniform / layer-wise."""

from __future__ import annotations

import random

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig

KINDS = ("size_uniform", "index_uniform", "size_layerwise", "index_layerwise")


def _pick(rng: random.Random, total: int, as_indices: bool, minimum: int = 1):
    k = rng.randint(minimum, total)
    return sorted(rng.sample(range(total), k)) if as_indices else k


def random_subnet(cfg: ModelConfig, rng: random.Random, kind: str) -> SubnetConfig:
    as_indices = kind.startswith("index")
    hpg = cfg.num_attention_heads // cfg.num_query_groups

    def layer() -> LayerSubnet:
        return LayerSubnet(query_groups=_pick(rng, cfg.num_query_groups, as_indices),
                           heads_per_group=_pick(rng, hpg, as_indices), ffn=_pick(rng, cfg.ffn_hidden_size, as_indices))

    layers = _pick(rng, cfg.num_layers, as_indices)
    n_layers = len(layers) if isinstance(layers, list) else layers
    per_layer = [layer() for _ in range(n_layers)] if kind.endswith("layerwise") else layer()
    return SubnetConfig(hidden=_pick(rng, cfg.hidden_size, as_indices), layers=layers, layer=per_layer)
