"""Selective recompute (the MLPs, models/execution.py) changes memory, never the numbers: the same loss and
gradients as without it, for the sequential (Llama) and the parallel-residual (GPT-NeoX) layer."""

from __future__ import annotations

import pytest
import torch

from nemo_subnet.models import ModelConfig

LLAMA = dict(family="llama", vocab_size=300, hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2,
             ffn_hidden_size=64, kv_channels=8, max_position_embeddings=32, normalization="RMSNorm", norm_eps=1e-5,
             activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False, init_method_std=0.2)
NEOX = dict(LLAMA, family="gpt_neox", num_query_groups=4, normalization="LayerNorm", activation="gelu", gated_mlp=False,
            add_bias_linear=True, add_qkv_bias=True, parallel_residual=True, rotary_percent=0.25)


def _loss_and_grads(cfg: ModelConfig, recompute: str):
    from nemo_subnet.models import build_gpt_model
    from nemo_subnet.models.execution import ExecutionOptions
    from nemo_subnet.runtime import compute_device

    torch.manual_seed(0)
    model = build_gpt_model(cfg, execution=ExecutionOptions(recompute=recompute))
    device = compute_device()
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1)).to(device)
    positions = torch.arange(16, device=device).expand(2, 16)
    loss = model(tokens, positions, attention_mask=None).float().logsumexp(-1).mean()  # any scalar of the logits
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("shape", [LLAMA, NEOX], ids=["llama", "gpt_neox"])
def test_selective_recompute_gives_the_same_gradients(shape, megatron_runtime):
    cfg = ModelConfig(**shape)
    loss, grads = _loss_and_grads(cfg, "none")
    loss_r, grads_r = _loss_and_grads(cfg, "selective")
    torch.testing.assert_close(loss_r, loss, rtol=0, atol=0)
    assert grads_r.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_r[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_selective_recompute_refuses_a_sequential_layer_with_linear_biases():
    from nemo_subnet.models.execution import ExecutionOptions

    selective = ExecutionOptions(recompute="selective")
    selective.check(1, 2, model=ModelConfig(**NEOX))  # parallel residual: the bias is added inside the checkpoint
    with pytest.raises(ValueError, match="add_bias_linear"):
        selective.check(1, 2, model=ModelConfig(**dict(NEOX, parallel_residual=False)))
