"""A sub-network at its own size, built on every rank from the resident super-network (no disk, no gather).

``compact_subnet(supernet, subnet)`` returns this rank's part of a plain Megatron GPTModel that computes
what the extracted student computes, at the candidate's cost: each rank slices its *own* shard (its TP
chunk of heads, groups and neurons, its PP stage's layers) with extraction's slicing (extract.py's
``extract_state`` run on the local state dict with a local view of the model config), so nothing moves
between ranks and no second copy of the slicing maths exists.

Uneven local widths are fine: Megatron's column-parallel layers never reduce, and a row-parallel layer
all-reduces an ``[s, b, hidden]`` output that has the same shape on every rank, whatever width each rank
reduced over. Each rank therefore builds its layers with its own local sizes (local count x tp, so
Megatron's ``divide`` gives the local count) through the heterogeneous-layer hook of
``LayerwiseTransformerConfig``. A rank that keeps no head group (or no neuron) of a layer gets one dummy
group (neuron) whose ``linear_proj`` columns (``linear_fc2`` column) are zero: its partial sum is an exact
zero, like the masked super-network's. A pipeline stage builds only its kept layers (possibly none); the
hidden size, and so every pipeline message, is the candidate's.

Same numbers as extraction (invariant 2), tested at TP=1/2 and PP=1/2 (tests/subnet). The masked
super-network stays the choice for a static graph (torch.compile / CUDA graphs: one graph serves every
candidate) and where a second copy of the candidate's weights does not fit (see docs/search.md).
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.norms import Norm
from nemo_subnet.subnet.config import LayerIndices, ResolvedSubnet, SubnetConfig, resolve
from nemo_subnet.subnet.extract import extract_state
from nemo_subnet.subnet.masks import tp_shard
from nemo_subnet.subnet.supernet import index_mask


@dataclasses.dataclass(frozen=True)
class LocalSubnet:
    """This rank's view of a sub-network: what to slice from its shard, and the sizes of what it builds."""

    shard_cfg: ModelConfig
    """The rank's shard described as a model (its stage's layers, its TP chunk of groups, heads, FFN)."""
    indices: ResolvedSubnet
    """Kept units in the shard's local index space (``layers``: local layer positions)."""
    dummy_heads: tuple[bool, ...]
    """Per kept local layer: the rank holds no kept group and builds one dummy (zero output columns)."""
    dummy_ffn: tuple[bool, ...]


def _local(indices, total: int) -> tuple[int, ...]:
    """This TP rank's kept positions (local index space) of a TP-partitioned dimension of ``total`` units."""
    return tuple(torch.nonzero(tp_shard(index_mask(indices, total))).flatten().tolist())


def local_subnet(supernet, resolved: ResolvedSubnet) -> LocalSubnet:
    cfg: ModelConfig = supernet.model_config
    tp = parallel_state.get_tensor_model_parallel_world_size()
    hpg = cfg.num_attention_heads // cfg.num_query_groups
    layers, per_layer, dummy_heads, dummy_ffn = [], [], [], []
    for position, layer in enumerate(supernet.decoder.layers):
        kept = resolved.layer(layer.layer_number - 1)  # global layer index
        if kept is None:
            continue
        groups, ffn = _local(kept.groups, cfg.num_query_groups), _local(kept.ffn, cfg.ffn_hidden_size)
        dummy_heads.append(not groups)
        dummy_ffn.append(not ffn)
        layers.append(position)
        per_layer.append(LayerIndices(groups=groups or (0,), heads_in_group=kept.heads_in_group, ffn=ffn or (0,)))
    shard_cfg = dataclasses.replace(cfg, num_layers=len(supernet.decoder.layers),
                                    num_query_groups=cfg.num_query_groups // tp,
                                    num_attention_heads=cfg.num_query_groups // tp * hpg,
                                    ffn_hidden_size=cfg.ffn_hidden_size // tp)
    return LocalSubnet(shard_cfg, ResolvedSubnet(hidden=resolved.hidden, layers=tuple(layers), per_layer=tuple(per_layer)),
                       tuple(dummy_heads), tuple(dummy_ffn))


def _build_config(cfg: ModelConfig, local: LocalSubnet) -> tuple[ModelConfig, int]:
    """(model config whose layer-wise sizes are this rank's local sizes x tp, this stage's layer count).

    Megatron numbers a stage's layers from ``stage * num_layers / pp``: the stage's kept layers take the
    entries from there on; the other entries (other stages' layers) are never built."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    offset = stage * (cfg.num_layers // pp)
    heads, groups, ffn = [tp] * cfg.num_layers, [tp] * cfg.num_layers, [tp] * cfg.num_layers
    for i, li in enumerate(local.indices.per_layer):
        heads[offset + i] = len(li.groups) * len(li.heads_in_group) * tp
        groups[offset + i] = len(li.groups) * tp
        ffn[offset + i] = len(li.ffn) * tp
    return dataclasses.replace(cfg, hidden_size=len(local.indices.hidden), num_attention_heads=max(heads),
                               num_query_groups=max(groups), ffn_hidden_size=max(ffn), layer_num_attention_heads=heads,
                               layer_num_query_groups=groups, layer_ffn_hidden_size=ffn), len(local.indices.per_layer)


@torch.no_grad()
def compact_subnet(supernet, subnet: SubnetConfig | ResolvedSubnet) -> GPTModel:
    """This rank's part of the sub-network as a plain GPTModel (eval mode), from the super-network's
    resident weights. Collective only where Megatron's GPTModel constructor is (tied embeddings at PP > 1):
    every rank calls it in step."""
    from nemo_subnet.models.builder import build_gpt_model
    from nemo_subnet.models.specs import gpt_layer_spec

    cfg: ModelConfig = supernet.model_config
    resolved = resolve(cfg, subnet) if isinstance(subnet, SubnetConfig) else subnet
    local = local_subnet(supernet, resolved)
    state = extract_state(local.shard_cfg, local.indices, supernet.state_dict())
    for i, (no_heads, no_ffn) in enumerate(zip(local.dummy_heads, local.dummy_ffn)):
        if no_heads:
            state[f"decoder.layers.{i}.self_attention.linear_proj.weight"].zero_()
        if no_ffn:
            state[f"decoder.layers.{i}.mlp.linear_fc2.weight"].zero_()
    build_cfg, n_layers = _build_config(cfg, local)
    block = TransformerBlockSubmodules(layer_specs=[gpt_layer_spec(cfg)] * n_layers, layer_norm=Norm)
    dtype = next(supernet.parameters()).dtype
    model = build_gpt_model(build_cfg, layer_spec=block, params_dtype=dtype, perform_initialization=False,
                            parallel_output=supernet.parallel_output)
    expected = {k for k in model.state_dict() if not k.endswith("_extra_state")}
    if expected != set(state):
        raise RuntimeError(f"compaction produced {sorted(set(state) ^ expected)[:6]} unlike the model it builds")
    model.load_state_dict(state, strict=False, assign=True)  # the sliced tensors become the parameters
    return model.eval()
