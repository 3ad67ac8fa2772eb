"""The super-network: a Megatron GPTModel whose elastic slots can activate any sub-network in place.

``build_supernet(cfg)`` builds this rank's part (any TP/PP) from the family's layer spec with the
elastic modules of masks.py in its slots; ``model.set_subnet(subnet)`` switches the active
sub-network without rebuilding or reallocating anything, ``model.reset_subnet()`` restores the full
model (bit-identical to the plain GPTModel).
"""

from __future__ import annotations

import copy

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from nemo_subnet.models.builder import build_gpt_model
from nemo_subnet.models.config import ModelConfig, to_transformer_config
from nemo_subnet.models.specs import gpt_layer_spec
from nemo_subnet.subnet.config import ResolvedSubnet, SubnetConfig, resolve
from nemo_subnet.subnet.masks import (ElasticParallelResidualLayer, ElasticTransformerLayer, MaskedNorm,
                                      MaskedRowParallelLinear)


def supernet_block_spec(cfg: ModelConfig) -> TransformerBlockSubmodules:
    """The family's layer spec with elastic modules in the norm, linear_proj and linear_fc2 slots."""
    from megatron.core import parallel_state

    if cfg.is_layerwise:
        raise ValueError("a super-network must be uniform; layer-wise sizes belong to extracted sub-networks")
    layer = copy.deepcopy(gpt_layer_spec(cfg))
    layer.module = ElasticParallelResidualLayer if cfg.parallel_residual else ElasticTransformerLayer
    layer.submodules.input_layernorm = MaskedNorm
    layer.submodules.pre_mlp_layernorm = MaskedNorm
    layer.submodules.self_attention.submodules.linear_proj = MaskedRowParallelLinear
    layer.submodules.mlp.submodules.linear_fc2 = MaskedRowParallelLinear
    config = to_transformer_config(cfg, parallel_state.get_tensor_model_parallel_world_size(),
                                   parallel_state.get_pipeline_model_parallel_world_size())
    return TransformerBlockSubmodules(layer_specs=[layer] * get_num_layers_to_build(config), layer_norm=MaskedNorm)


def index_mask(indices, size: int) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[list(indices)] = 1.0
    return mask


class ElasticGPTModel(GPTModel):
    """GPTModel + ``set_subnet`` / ``reset_subnet``. ``model_config`` is set by build_supernet."""

    model_config: ModelConfig

    def set_subnet(self, subnet: SubnetConfig | ResolvedSubnet) -> ResolvedSubnet:
        cfg = self.model_config
        resolved = resolve(cfg, subnet) if isinstance(subnet, SubnetConfig) else subnet
        hidden_mask = index_mask(resolved.hidden, cfg.hidden_size)
        for module in self.modules():
            if isinstance(module, MaskedNorm):
                module.set_mask(hidden_mask)
        heads_per_group = cfg.num_attention_heads // cfg.num_query_groups
        for layer in self.decoder.layers:
            indices = resolved.layer(layer.layer_number - 1)
            layer.subnet_skip = indices is None
            if indices is None:
                continue
            head_mask = index_mask(indices.query_heads(heads_per_group), cfg.num_attention_heads)
            layer.self_attention.linear_proj.set_mask(head_mask.repeat_interleave(cfg.kv_channels))  # [heads*d]
            layer.mlp.linear_fc2.set_mask(index_mask(indices.ffn, cfg.ffn_hidden_size))
        self.active_subnet = resolved
        return resolved

    def reset_subnet(self) -> None:
        self.set_subnet(SubnetConfig())


def build_supernet(cfg: ModelConfig, **kwargs) -> ElasticGPTModel:
    model = build_gpt_model(cfg, layer_spec=supernet_block_spec(cfg), model_class=ElasticGPTModel, **kwargs)
    model.model_config = cfg
    return model
