"""Zero-pad a model to uniform per-layer sizes so a standard transformers architecture can hold it.

transformers' GPT-NeoX / Llama / Qwen classes have one head count and one MLP width for all layers
(and GPT-NeoX derives the head size from hidden_size / heads). A layer-wise sub-network is exported by
padding every layer to a common layout with zero weights, which computes exactly the same function:
- padded FFN neurons have zero fc1 rows (and bias) and zero fc2 columns: their contribution is 0;
- padded query heads (inside a group or in a padded group) have zero q/k/v rows and zero
  ``linear_proj`` columns: whatever their attention computes is multiplied by 0.
The same padding gives a uniform model the head layout its family's config accepts (e.g. Llama needs
hidden_size % heads == 0: 2 x 2 heads at hidden 54 export as 2 x 3; see FamilyAdapter.hf_attention_layout).
The cost is storage for the zeros; the HF config stays the family's standard one, no remote code.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import torch

from nemo_subnet.models.config import ModelConfig

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def pad_to_uniform(cfg: ModelConfig, state: Mapping[str, torch.Tensor], *, groups: int | None = None,
                   heads_per_group: int | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    sizes = [cfg.layer_sizes(i) for i in range(cfg.num_layers)]
    target_groups = groups or max(g for _, g, _ in sizes)
    target_hpg = heads_per_group or max(h // g for h, g, _ in sizes)
    target_ffn = max(f for _, _, f in sizes)
    if all(g == target_groups and h == g * target_hpg and f == target_ffn for h, g, f in sizes):
        return cfg, dict(state)
    if target_groups < max(g for _, g, _ in sizes) or target_hpg < max(h // g for h, g, _ in sizes):
        raise ValueError(f"cannot pad to {target_groups} query groups x {target_hpg} heads: a layer is larger")
    d = cfg.kv_channels
    out = {}
    for name, tensor in state.items():
        match = _LAYER.match(name)
        if not match:
            out[name] = tensor
            continue
        heads, g, f = sizes[int(match.group(1))]
        out[name] = _pad(match.group(2), tensor, cfg.gated_mlp, d, g, heads // g, f, target_groups, target_hpg, target_ffn)
    uniform = dataclasses.replace(cfg, num_attention_heads=target_groups * target_hpg, num_query_groups=target_groups,
                                  ffn_hidden_size=target_ffn, layer_num_attention_heads=None,
                                  layer_num_query_groups=None, layer_ffn_hidden_size=None)
    return uniform, out


def _pad(name, tensor, gated, d, g, p, f, tg, tp, tf):
    tail = tensor.shape[1:]
    if name.startswith("self_attention.linear_qkv."):
        old = tensor.reshape(g, p + 2, d, *tail)
        new = tensor.new_zeros(tg, tp + 2, d, *tail)
        new[:g, :p] = old[:, :p]
        new[:g, tp:] = old[:, p:]  # k, v
        return new.reshape(-1, *tail)
    if name == "self_attention.linear_proj.weight":
        new = tensor.new_zeros(tensor.shape[0], tg, tp, d)
        new[:, :g, :p] = tensor.reshape(tensor.shape[0], g, p, d)
        return new.reshape(tensor.shape[0], -1)
    if name.startswith("mlp.linear_fc1."):
        parts = tensor.chunk(2, dim=0) if gated else (tensor,)
        padded = []
        for part in parts:
            new = part.new_zeros(tf, *tail)
            new[:f] = part
            padded.append(new)
        return torch.cat(padded)
    if name == "mlp.linear_fc2.weight":
        new = tensor.new_zeros(tensor.shape[0], tf)
        new[:, :f] = tensor
        return new
    return tensor
