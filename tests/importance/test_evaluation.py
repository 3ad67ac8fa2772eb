"""evaluate_loss (importance and search): training's chunked CE from the final hidden states, never the whole
``[b, s, V]`` logits nor fp32 copies of them; the same value as CE on the model's logits."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nemo_subnet.models import ModelConfig

VOCAB, SEQ, MBS = 500, 256, 2  # padded vocabulary 512; 512 tokens per micro-batch
CFG = dict(family="llama", vocab_size=VOCAB, hidden_size=32, num_layers=2, num_attention_heads=4, num_query_groups=2,
           ffn_hidden_size=64, kv_channels=8, max_position_embeddings=SEQ, normalization="RMSNorm", norm_eps=1e-5,
           activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False, init_method_std=0.2)


class _LogitsSized(TorchDispatchMode):
    """Counts the new tensors of at least ``n`` elements (views and in-place results excluded), by dtype."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.seen: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() >= self.n and t.untyped_storage().data_ptr() not in inputs:
                key = str(t.dtype).removeprefix("torch.")
                self.seen[key] = self.seen.get(key, 0) + 1
        return out


def _model(dtype: str):
    from nemo_subnet.subnet.supernet import build_supernet

    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG, "dtype": dtype})
    return cfg, build_supernet(cfg).eval()


def _reference_loss(model, data) -> float:
    """CE on the model's whole logits, in float64."""
    total, count = 0.0, 0.0
    with torch.no_grad():
        for batch in data.batches:
            logits = model(batch["tokens"], batch["position_ids"], attention_mask=None)  # [b, s, v_padded]
            per_token = F.cross_entropy(logits[..., :VOCAB].double().reshape(-1, VOCAB), batch["labels"].reshape(-1),
                                        reduction="none")
            total += float((per_token * batch["loss_mask"].reshape(-1)).sum())
            count += float(batch["loss_mask"].sum())
    return total / count


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_evaluate_loss_is_chunked_and_never_holds_the_logits(megatron_runtime, monkeypatch, dtype, rtol):
    from nemo_subnet.importance.evaluation import evaluate_loss, random_batches
    import nemo_subnet.kernels.fused_linear_kd_loss  # noqa: F401  (the module, not the function of that name)

    fused = sys.modules["nemo_subnet.kernels.fused_linear_kd_loss"]

    monkeypatch.setattr(fused, "_CHUNK_ELEMENTS", 256 * 512)  # 256-token chunks: two per micro-batch
    cfg, model = _model(dtype)
    data = random_batches(VOCAB, num_batches=2, seq_length=SEQ, micro_batch_size=MBS)
    with _LogitsSized(MBS * SEQ * cfg.padded_vocab_size) as big:
        loss = evaluate_loss(model, cfg, data)
    # before: the logits, their fp32 copy and clone, megatron's fp32 working copies, per micro-batch
    assert big.seen == {}, big.seen
    assert loss == pytest.approx(_reference_loss(model, data), rel=rtol)


def test_evaluate_loss_leaves_the_model_returning_logits(megatron_runtime):
    from nemo_subnet.importance.evaluation import evaluate_loss, random_batches

    cfg, model = _model("float32")
    data = random_batches(VOCAB, num_batches=1, seq_length=16, micro_batch_size=MBS)
    evaluate_loss(model, cfg, data)
    batch = data.batches[0]
    with torch.no_grad():
        out = model(batch["tokens"], batch["position_ids"], attention_mask=None)
    assert out.shape[-1] == cfg.padded_vocab_size
