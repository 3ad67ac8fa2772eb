"""The super-network: a Megatron GPTModel whose elastic slots can activate any sub-network in place.

``build_supernet(cfg)`` builds this rank's part (any TP/PP) from the family's layer spec with the
elastic modules of masks.py in its slots; ``model.set_subnet(subnet)`` switches the active
sub-network without rebuilding or reallocating anything, ``model.reset_subnet()`` restores the full
model (bit-identical to the plain GPTModel in the eager mode).

``model.set_static_graph(True)`` (or ``build_supernet(cfg, static_graph=True)``) switches to the
static-graph forward of masks.py, and ``compile_supernet(model)`` compiles it once for all sub-networks.
"""

from __future__ import annotations

import copy

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from nemo_subnet.models.builder import build_gpt_model
from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.specs import gpt_block_spec, gpt_layer_spec
from nemo_subnet.subnet.config import ResolvedSubnet, SubnetConfig, resolve
from nemo_subnet.subnet.masks import (ElasticParallelResidualLayer, ElasticTransformerLayer, MaskedNorm,
                                      MaskedRowParallelLinear, SkippableLayer, MaskSlot, copy_to_buffers)


def supernet_block_spec(cfg: ModelConfig) -> TransformerBlockSubmodules:
    """The family's layer spec with elastic modules in the norm, linear_proj and linear_fc2 slots."""
    if cfg.is_layerwise:
        raise ValueError("a super-network must be uniform; layer-wise sizes belong to extracted sub-networks")
    layer = copy.deepcopy(gpt_layer_spec(cfg))
    layer.module = ElasticParallelResidualLayer if cfg.parallel_residual else ElasticTransformerLayer
    layer.submodules.input_layernorm = MaskedNorm
    layer.submodules.pre_mlp_layernorm = MaskedNorm
    layer.submodules.self_attention.submodules.linear_proj = MaskedRowParallelLinear
    layer.submodules.mlp.submodules.linear_fc2 = MaskedRowParallelLinear
    return gpt_block_spec(cfg, layer, final_norm=MaskedNorm)


def index_mask(indices, size: int) -> torch.Tensor:
    """A host 0/1 mask; set_subnet sends all of a switch's masks to the device in one transfer."""
    mask = torch.zeros(size)
    mask[list(indices)] = 1.0
    return mask


class ElasticGPTModel(GPTModel):
    """GPTModel + ``set_subnet`` / ``reset_subnet`` / ``set_static_graph``. ``model_config`` is set by build_supernet."""

    model_config: ModelConfig
    static_graph = False

    def set_subnet(self, subnet: SubnetConfig | ResolvedSubnet) -> ResolvedSubnet:
        cfg = self.model_config
        resolved = resolve(cfg, subnet) if isinstance(subnet, SubnetConfig) else subnet
        hidden_mask = index_mask(resolved.hidden, cfg.hidden_size)
        updates = []
        for module in self.modules():
            if isinstance(module, MaskedNorm):
                updates += module.mask_updates(hidden_mask)
        heads_per_group = cfg.num_attention_heads // cfg.num_query_groups
        for layer in self.decoder.layers:
            indices = resolved.layer(layer.layer_number - 1)
            updates += layer.skip_updates(indices is None)
            if indices is None:
                continue  # its head/FFN masks keep their last values: nothing reads a skipped layer's output
            head_mask = index_mask(indices.query_heads(heads_per_group), cfg.num_attention_heads)
            updates += layer.self_attention.linear_proj.mask_updates(head_mask.repeat_interleave(cfg.kv_channels))
            updates += layer.mlp.linear_fc2.mask_updates(index_mask(indices.ffn, cfg.ffn_hidden_size))
        copy_to_buffers(updates)
        self.active_subnet = resolved
        return resolved

    def reset_subnet(self) -> None:
        self.set_subnet(SubnetConfig())

    def set_static_graph(self, enabled: bool) -> None:
        """Static-graph forward (masks.py): no Python branch on the active sub-network, so one
        ``torch.compile`` / CUDA-graph capture serves every sub-network; skipped layers are computed and
        discarded. Off (eager): the full config is the plain model bit for bit and skipped layers are free."""
        self.static_graph = bool(enabled)
        for module in self.modules():
            if isinstance(module, (MaskSlot, SkippableLayer)):
                module.static_graph = self.static_graph


def build_supernet(cfg: ModelConfig, *, static_graph: bool = False, **kwargs) -> ElasticGPTModel:
    """``kwargs`` as build_gpt_model's; ``static_graph`` see ``ElasticGPTModel.set_static_graph``."""
    model = build_gpt_model(cfg, layer_spec=supernet_block_spec(cfg), model_class=ElasticGPTModel, **kwargs)
    model.model_config = cfg
    model.set_static_graph(static_graph)
    return model


def compile_supernet(model: ElasticGPTModel, **compile_kwargs) -> ElasticGPTModel:
    """Switch ``model`` to the static-graph forward and compile it in place (``nn.Module.compile``):
    the same object keeps ``set_subnet`` and runs through Megatron's schedules; one compilation serves
    every sub-network. ``compile_kwargs`` go to torch.compile (e.g. ``mode="reduce-overhead"`` for CUDA
    graphs on GPU)."""
    model.set_static_graph(True)
    model.compile(**compile_kwargs)
    return model
