"""Layer specs per model: Megatron's local (no transformer-engine) spec with our slot choices.

Everything a family needs is expressed through ModuleSpec slots: SDPA in ``core_attention``, the norm
kind through Megatron's own LocalSpecProvider, and the parallel-residual layer as the ``module`` of the
layer spec (the one place Megatron has no slot, see layers.py).
"""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec

from nemo_subnet.models.attention import SDPACoreAttention
from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.layers import ParallelResidualTransformerLayer


def gpt_layer_spec(cfg: ModelConfig) -> ModuleSpec:
    spec = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=cfg.qk_layernorm, normalization=cfg.normalization))
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    if cfg.parallel_residual:
        spec.module = ParallelResidualTransformerLayer
    return spec
