"""The one parameter / FLOP counter (models/counting.py) against models actually built, uniform and layer-wise."""

from __future__ import annotations

import pytest

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import (attention_flops_per_token, count_parameters, forward_flops_per_token,
                                         layer_parameters, mlp_flops_per_token)

BASE = dict(vocab_size=250, hidden_size=48, num_layers=3, num_attention_heads=6, num_query_groups=3,
            ffn_hidden_size=96, kv_channels=8, max_position_embeddings=64, norm_eps=1e-5)
LLAMA = dict(BASE, family="llama", normalization="RMSNorm", activation="silu", gated_mlp=True, add_bias_linear=False,
             add_qkv_bias=False)
CONFIGS = {
    "llama": LLAMA,
    "llama_tied": dict(LLAMA, tie_embeddings=True),
    "gpt_neox": dict(BASE, family="gpt_neox", normalization="LayerNorm", activation="gelu", gated_mlp=False,
                     add_bias_linear=True, add_qkv_bias=True, parallel_residual=True, rotary_percent=0.25,
                     num_query_groups=6),
    "layerwise": dict(LLAMA, layer_num_attention_heads=[6, 4, 2], layer_num_query_groups=[3, 2, 1],
                      layer_ffn_hidden_size=[96, 64, 32]),
}


def _built(cfg: ModelConfig):
    from nemo_subnet.models.builder import build_gpt_model
    from nemo_subnet.runtime import runtime_scope

    with runtime_scope(tp=1, pp=1, seed=0):
        return build_gpt_model(cfg)


@pytest.mark.parametrize("name", CONFIGS)
def test_counts_equal_the_built_model(name):
    cfg = ModelConfig(**CONFIGS[name])
    model = _built(cfg)
    params = dict(model.named_parameters())
    assert count_parameters(cfg) == sum(p.numel() for p in params.values())
    for i, layer in enumerate(model.decoder.layers):
        assert layer_parameters(cfg, i) == sum(p.numel() for p in layer.parameters()), (name, i)
    # forward FLOPs, counted here from the built weights: 2 per weight of every matrix multiply (the 2-D weights
    # of the layers and of the output layer over the padded vocabulary; a tied output reuses the embedding),
    # + QK^T and attention x V over the sequence with each layer's own heads
    seq = 32
    matmul = sum(p.numel() for n, p in params.items() if p.dim() == 2 and "embedding" not in n)
    if cfg.tie_embeddings:
        matmul += params["embedding.word_embeddings.weight"].numel()
    heads = [layer.self_attention.linear_proj.weight.shape[1] // cfg.kv_channels for layer in model.decoder.layers]
    attention = sum(2 * 2 * seq * h * cfg.kv_channels for h in heads)
    assert attention_flops_per_token(cfg, seq) == attention
    mlp = sum(p.numel() for n, p in params.items() if p.dim() == 2 and ".mlp." in n)  # what selective recompute repeats
    assert mlp_flops_per_token(cfg) == 2 * mlp
    assert forward_flops_per_token(cfg, seq) == 2 * matmul + attention
