"""Move between a global (TP=1, all layers) Megatron state dict and this rank's model.

A rank's model holds its TP shard of every tensor-parallel parameter (Megatron marks them with
``tensor_model_parallel`` and ``partition_dim``) and only its PP stage's layers, numbered locally
from 0; ``layer.layer_number`` (1-based, global) maps them back.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import torch
from megatron.core import parallel_state

from nemo_subnet.models.config import ModelConfig

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def _global_name(model, local_name: str) -> str:
    match = _LAYER.match(local_name)
    if not match:
        return local_name
    layer = model.decoder.layers[int(match.group(1))]
    return f"decoder.layers.{layer.layer_number - 1}." + local_name[match.end():]


def shard_tensor(cfg: ModelConfig, name: str, tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This TP rank's slice of a global tensor for ``param``."""
    if not getattr(param, "tensor_model_parallel", False):
        return tensor
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if cfg.gated_mlp and ".mlp.linear_fc1." in name:
        # Each rank holds [gate shard | up shard], not a contiguous slice of [gate | up].
        gate, up = tensor.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    return tensor.chunk(tp, dim=param.partition_dim)[rank]


def load_global_state(model, cfg: ModelConfig, get_global: Callable[[str], torch.Tensor] | Mapping[str, torch.Tensor]) -> None:
    """Copy this rank's part of a global state dict into ``model``; every parameter must be covered."""
    fetch = get_global.__getitem__ if isinstance(get_global, Mapping) else get_global
    with torch.no_grad():
        for local_name, param in model.state_dict(keep_vars=True).items():
            if local_name.endswith("_extra_state"):
                continue
            name = _global_name(model, local_name)
            if name == "output_layer.weight" and cfg.tie_embeddings:
                name = "embedding.word_embeddings.weight"  # last-stage copy of the tied embedding
            local = shard_tensor(cfg, name, fetch(name), param)
            if local.shape != param.shape:
                raise ValueError(f"{name}: expected shard shape {tuple(param.shape)}, got {tuple(local.shape)}")
            param.copy_(local)


def global_state_from_model(model) -> dict[str, torch.Tensor]:
    """The global state dict of a TP=1, PP=1 model (export runs at that layout)."""
    if parallel_state.get_tensor_model_parallel_world_size() != 1 or parallel_state.get_pipeline_model_parallel_world_size() != 1:
        raise RuntimeError("global_state_from_model needs a TP=1, PP=1 model")
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
