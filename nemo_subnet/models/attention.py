"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

Fills Megatron's ``core_attention`` slot with the slot's constructor contract (that of
``DotProductAttention``). SDPA picks flash / memory-efficient kernels on GPU and a fused kernel on CPU,
and handles GQA without materializing repeated K/V.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


class SDPACoreAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention does not support context parallelism")
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads_per_partition = config.num_attention_heads // tp

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed sequences nor attention_bias")
        mask_type = attn_mask_type or self.attn_mask_type
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        causal = mask_type == AttnMaskType.causal
        # Megatron masks are True where attention is *not* allowed; SDPA wants True where it is.
        mask = None if causal or attention_mask is None else ~attention_mask
        dropout_p = self.dropout_p if self.training else 0.0
        # Dropout draws from the TP-rank stream; without dropout, no fork: swapping RNG states is host
        # work that torch.compile cannot trace (a graph break per layer) and CUDA graphs cannot capture.
        rng = tensor_parallel.get_cuda_rng_tracker().fork() if dropout_p > 0 else contextlib.nullcontext()
        with rng:
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal,
                scale=self.softmax_scale, enable_gqa=k.shape[1] != q.shape[1],
            )
        # [b, n, s, d] -> [s, b, n*d]
        s, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(s, b, -1)
