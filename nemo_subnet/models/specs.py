"""Layer and block specs per model: Megatron's local (no transformer-engine) spec with our slot choices.

Everything a family needs is expressed through ModuleSpec slots: SDPA in ``core_attention``, ``Norm``
(norms.py: weights in the parameter dtype) in every norm slot, the norm kind through Megatron's own
LocalSpecProvider, and the parallel-residual layer as the ``module`` of the layer spec (the one place
Megatron has no slot, see layers.py). The final norm is a slot of the *block* spec
(``TransformerBlockSubmodules.layer_norm``): given only a layer spec, Megatron's TransformerBlock picks
its own fp32 norm class, so models are built from ``gpt_block_spec``.
"""

from __future__ import annotations

import copy

from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from nemo_subnet.models.attention import SDPACoreAttention
from nemo_subnet.models.config import ModelConfig, to_transformer_config
from nemo_subnet.models.layers import ParallelResidualTransformerLayer
from nemo_subnet.models.norms import Norm


def gpt_layer_spec(cfg: ModelConfig) -> ModuleSpec:
    spec = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=cfg.qk_layernorm, normalization=cfg.normalization))
    spec.submodules.input_layernorm = Norm
    spec.submodules.pre_mlp_layernorm = Norm
    attention = spec.submodules.self_attention.submodules
    attention.core_attention = SDPACoreAttention
    if cfg.qk_layernorm:
        attention.q_layernorm = attention.k_layernorm = Norm
    if cfg.parallel_residual:
        spec.module = ParallelResidualTransformerLayer
    return spec


def gpt_block_spec(cfg: ModelConfig, layer_spec: ModuleSpec | None = None,
                   final_norm: type = Norm) -> TransformerBlockSubmodules:
    """This pipeline stage's layers (``layer_spec``, default the family's) and the final norm slot."""
    config = to_transformer_config(cfg, parallel_state.get_tensor_model_parallel_world_size(),
                                   parallel_state.get_pipeline_model_parallel_world_size())
    layer_spec = layer_spec or gpt_layer_spec(cfg)
    return TransformerBlockSubmodules(layer_specs=[layer_spec] * get_num_layers_to_build(config), layer_norm=final_norm)
