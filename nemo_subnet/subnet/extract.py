"""Extraction: (super-network weights, sub-network) -> a standalone smaller model, by slicing.

A pure function on global (TP=1, all layers) Megatron state dicts, so it is independent of the layout
the super-network ran at; the result is saved as an ordinary checkpoint that loads at any TP/PP the
new sizes allow. Kept layers are renumbered 0..n-1 in their original order.

Megatron layouts sliced here (see conversion/adapters/base.py): ``linear_qkv`` rows are grouped per
query group as [q heads of the group | k | v], ``linear_proj`` columns follow query heads group by
group, gated ``linear_fc1`` rows are [gate | up].
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Mapping

import torch

from nemo_subnet.config import PositiveInt
from nemo_subnet.models.config import ModelConfig
from nemo_subnet.subnet.config import LayerIndices, ResolvedSubnet

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclasses.dataclass
class ExtractConfig:
    """One extraction (``nemo-subnet extract``'s flags and ``--config`` file)."""

    ckpt: Path | None = None
    """Super-network checkpoint directory (required)."""
    subnet: Path | None = None
    """Sub-network YAML: hidden / layers / per-layer query_groups, heads_per_group, ffn as counts (first k) or
    index lists (required)."""
    out: Path | None = None
    """Checkpoint directory to create (required)."""
    tp: PositiveInt = 1
    """Tensor-parallel size the result must support (its training layout)."""
    pp: PositiveInt = 1
    """Pipeline-parallel size the result must support."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""


def extract_model_config(cfg: ModelConfig, sub: ResolvedSubnet) -> ModelConfig:
    heads = [len(li.groups) * len(li.heads_in_group) for li in sub.per_layer]
    groups = [len(li.groups) for li in sub.per_layer]
    ffn = [len(li.ffn) for li in sub.per_layer]
    uniform = len(set(heads)) == len(set(groups)) == len(set(ffn)) == 1
    return dataclasses.replace(
        cfg, hidden_size=len(sub.hidden), num_layers=len(sub.layers),
        num_attention_heads=max(heads), num_query_groups=max(groups), ffn_hidden_size=max(ffn),
        layer_num_attention_heads=None if uniform else heads,
        layer_num_query_groups=None if uniform else groups,
        layer_ffn_hidden_size=None if uniform else ffn,
    )


def _take(tensor: torch.Tensor, dim: int, indices) -> torch.Tensor:
    return tensor.index_select(dim, torch.as_tensor(indices, dtype=torch.long, device=tensor.device))


def _slice_layer_tensor(cfg: ModelConfig, name: str, tensor: torch.Tensor, li: LayerIndices, hidden) -> torch.Tensor:
    d = cfg.kv_channels
    hpg = cfg.num_attention_heads // cfg.num_query_groups
    if name in ("input_layernorm.weight", "input_layernorm.bias", "pre_mlp_layernorm.weight", "pre_mlp_layernorm.bias",
                "self_attention.linear_proj.bias", "mlp.linear_fc2.bias"):
        return _take(tensor, 0, hidden)
    if name.startswith("self_attention.linear_qkv."):
        # [G*(hpg+2)*d, (h)] -> [G, hpg+2, d, (h)]: keep groups, then q heads inside them plus k and v
        grouped = _take(tensor.reshape(cfg.num_query_groups, hpg + 2, d, *tensor.shape[1:]), 0, li.groups)
        rows = list(li.heads_in_group) + [hpg, hpg + 1]
        out = _take(grouped, 1, rows).reshape(-1, *tensor.shape[1:])
        return _take(out, 1, hidden) if name.endswith("weight") else out
    if name.startswith("self_attention.q_layernorm") or name.startswith("self_attention.k_layernorm"):
        return tensor  # per head dimension, which stays whole
    if name == "self_attention.linear_proj.weight":
        # [h, G*hpg*d] -> [h, G, hpg, d]
        cols = _take(_take(tensor.reshape(tensor.shape[0], cfg.num_query_groups, hpg, d), 1, li.groups), 2, li.heads_in_group)
        return _take(cols.reshape(tensor.shape[0], -1), 0, hidden)
    if name.startswith("mlp.linear_fc1."):
        parts = tensor.chunk(2, dim=0) if cfg.gated_mlp else (tensor,)
        out = torch.cat([_take(part, 0, li.ffn) for part in parts])
        return _take(out, 1, hidden) if name.endswith("weight") else out
    if name == "mlp.linear_fc2.weight":
        return _take(_take(tensor, 1, li.ffn), 0, hidden)
    raise KeyError(f"extraction does not know how to slice layer tensor {name!r}")


def extract_state(cfg: ModelConfig, sub: ResolvedSubnet, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sub-network's global state dict (contiguous tensors) from the super-network's."""
    new_index = {old: new for new, old in enumerate(sub.layers)}
    out = {}
    for name, tensor in state.items():
        if name.endswith("_extra_state"):
            continue
        match = _LAYER.match(name)
        if match:
            old, rest = int(match.group(1)), match.group(2)
            if old not in new_index:
                continue
            out[f"decoder.layers.{new_index[old]}.{rest}"] = _slice_layer_tensor(
                cfg, rest, tensor, sub.per_layer[new_index[old]], sub.hidden).contiguous()
        elif name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            out[name] = _take(tensor, 1, sub.hidden).contiguous()
        elif name.startswith("decoder.final_layernorm."):
            out[name] = _take(tensor, 0, sub.hidden).contiguous()
        else:
            raise KeyError(f"extraction does not know how to slice {name!r}")
    return out


def extract_checkpoint(ckpt_dir, subnet, out_dir, *, tp: int = 1, pp: int = 1, overwrite: bool = False) -> ModelConfig:
    """Slice a checkpoint's sub-network into a standalone checkpoint (single process, TP=1/PP=1 runtime).

    ``tp``/``pp`` are the layout the result must support: sizes they cannot shard, and sub-networks the
    family cannot export to HF, are rejected here, before anything is written.
    """
    import json
    import shutil
    import tempfile

    from nemo_subnet.checkpointing import HF_CONFIG, TOKENIZER, atomic_directory, load_model, read_model_config, save_model
    from nemo_subnet.conversion.sharding import global_state_from_model, load_global_state
    from nemo_subnet.models.builder import build_gpt_model
    from nemo_subnet.subnet.config import SubnetConfig, SubnetConfigError, check_exportable, resolve
    from nemo_subnet.models.counting import count_parameters

    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    subnet = subnet if isinstance(subnet, SubnetConfig) else SubnetConfig.load(subnet)
    cfg = read_model_config(ckpt_dir)  # validate before reading any weight
    resolved = resolve(cfg, subnet)
    check_exportable(cfg, resolved)
    sub_cfg = extract_model_config(cfg, resolved)
    try:
        sub_cfg.check_parallel(tp, pp)
    except ValueError as err:
        raise SubnetConfigError(f"the extracted model cannot run at tp={tp} pp={pp}: {err}") from None
    cfg, model = load_model(ckpt_dir)
    sub_state = extract_state(cfg, resolved, global_state_from_model(model))
    del model
    sub_model = build_gpt_model(sub_cfg, perform_initialization=False)
    load_global_state(sub_model, sub_cfg, sub_state)
    hf_config = json.loads((ckpt_dir / HF_CONFIG).read_text()) if (ckpt_dir / HF_CONFIG).is_file() else None
    tokenizer = ckpt_dir / TOKENIZER if (ckpt_dir / TOKENIZER).is_dir() else None
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_model(sub_model, sub_cfg, tmp, hf_config=hf_config, tokenizer_dir=tokenizer)
        subnet.save(tmp / "subnet.yaml")
        (tmp / "extraction.json").write_text(json.dumps({
            "source": str(ckpt_dir.resolve()), "source_parameters": count_parameters(cfg),
            "parameters": count_parameters(sub_cfg), "layerwise": sub_cfg.is_layerwise,
            "kept_layers": list(resolved.layers)}, indent=2))
    return sub_cfg
