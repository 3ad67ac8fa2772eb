"""Sparse-target KD from a teacher cache: `fused_linear_sampled_kd_loss` vs the naive dense reference (sampled
draws and top-k with the tail bin, odd shapes, padding, masks, per-dtype tolerances), its equality with full
forward-KL KD when the target is the whole teacher distribution, and `vocab_parallel_sample`'s draws and top-k.
The TP=2 equalities are in test_fused_output_tp2.py; unbiasedness in test_sampled_kd_unbiased.py."""

from __future__ import annotations

import pytest
import torch
from kd_testing import BACKENDS, assert_close, grad_of
from test_fused_linear_kd_loss import _LargestTensor

from nemo_subnet.kernels import (Backend, Divergence, Reduction, fused_linear_kd_loss, fused_linear_sampled_kd_loss,
                                 vocab_parallel_sample)
from nemo_subnet.kernels.reference import sampled_kd_loss_reference

N, H, V, VOCAB, K = 41, 24, 277, 263, 12  # odd token count; 14 padding columns
N_TRITON, V_TRITON, VOCAB_TRITON = 11, 96, 91  # the interpreter is slow: smaller under Triton
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 2e-2, 5e-2


def _inputs(seed: int, device, n=N, v=V, vocab=VOCAB, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, H, generator=g) * 0.3).to(device=device, dtype=dtype).requires_grad_()
    teacher = (torch.randn(n, v, generator=g) * 2.0).to(device)  # teacher logits (padding columns included)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::6] = -100
    loss_mask = (torch.rand(n, generator=g) > 0.2).float()
    uniforms = torch.rand(n, K, generator=g)
    return dict(hidden=hidden, weight=weight, teacher=teacher, labels=labels.to(device), loss_mask=loss_mask.to(device),
                uniforms=uniforms.to(device))


def _target(x, method, vocab, temperature):
    ids, probs = vocab_parallel_sample(x["teacher"], k=K, method=method, uniforms=x["uniforms"],
                                       temperature=temperature, vocab_size=vocab)
    return (ids, None, False) if method == "sample" else (ids, probs, True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["sample", "topk"])
@pytest.mark.parametrize("temperature,ce_weight,reduction", [
    (1.0, 0.0, Reduction.MEAN), (2.0, 0.4, Reduction.MEAN), (1.0, 0.4, Reduction.SUM),
])
def test_matches_dense_reference(backend, method, temperature, ce_weight, reduction, device):
    n, v, vocab = (N_TRITON, V_TRITON, VOCAB_TRITON) if backend is Backend.TRITON else (N, V, VOCAB)
    x = _inputs(50, device, n, v, vocab)
    ids, probs, tail = _target(x, method, vocab, temperature)
    kwargs = dict(tail=tail, temperature=temperature, labels=x["labels"], loss_mask=x["loss_mask"], vocab_size=vocab,
                  reduction=reduction, kd_weight=0.6, ce_weight=ce_weight)
    loss = fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, probs, chunk_size=8, backend=backend, **kwargs)
    expected = sampled_kd_loss_reference(x["hidden"] @ x["weight"].T, ids, probs, **kwargs)
    assert_close(loss, expected, torch.float32)
    got, want = grad_of(loss, x["hidden"], x["weight"]), grad_of(expected, x["hidden"], x["weight"])
    for a, b in zip(got, want):
        assert_close(a, b, torch.float32, grad=True)
    assert torch.all(got[1][vocab:] == 0)  # padding rows of the weight: no gradient


@pytest.mark.parametrize("method", ["sample", "topk"])
def test_bf16_close_to_fp32(method, device):
    x = _inputs(51, device)
    ids, probs, tail = _target(x, method, VOCAB, 2.0)
    kwargs = dict(tail=tail, temperature=2.0, labels=x["labels"], vocab_size=VOCAB, ce_weight=0.5, chunk_size=16,
                  backend=Backend.TORCH)
    loss32 = fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, probs, **kwargs)
    h16, w16 = (x[k].detach().bfloat16().requires_grad_() for k in ("hidden", "weight"))
    loss16 = fused_linear_sampled_kd_loss(h16, w16, ids, probs, **kwargs)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=BF16_LOSS_RTOL, atol=1e-3)
    for got, want in zip(grad_of(loss16, h16, w16), grad_of(loss32, x["hidden"], x["weight"])):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=BF16_GRAD_RTOL, atol=BF16_GRAD_RTOL * float(want.abs().max()))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_whole_distribution_target_has_the_full_kd_gradient(temperature, device):
    """Target = every id with its exact P_T: the CE differs from forward KL by the constant H(P_T), so the
    gradients are the full-KD op's and the loss is KL + H."""
    x = _inputs(52, device)
    ids, probs = vocab_parallel_sample(x["teacher"], k=VOCAB, method="topk", temperature=temperature, vocab_size=VOCAB)
    kwargs = dict(temperature=temperature, vocab_size=VOCAB, loss_mask=x["loss_mask"], backend=Backend.TORCH)
    sparse = fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, probs, chunk_size=16, **kwargs)
    full = fused_linear_kd_loss(x["hidden"], x["weight"], teacher_logits=x["teacher"], chunk_size=16,
                                divergence=Divergence.FORWARD_KL, **kwargs)
    log_p = torch.log_softmax(x["teacher"][:, :VOCAB] / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    w = x["loss_mask"] / x["loss_mask"].sum()
    assert_close(sparse, full + temperature**2 * (w * entropy).sum(), torch.float32)
    for a, b in zip(grad_of(sparse, x["hidden"], x["weight"]), grad_of(full, x["hidden"], x["weight"])):
        assert_close(a, b, torch.float32, grad=True)


def test_repeated_draws_count_as_their_multiplicity(device):
    """K draws with repeats equal the distinct ids weighted by count / K."""
    x = _inputs(53, device)
    ids = torch.tensor([[3, 3, 3, 7]] * N, device=device)
    probs = torch.tensor([[0.75, 0.25, 0.0, 0.0]] * N, device=device)
    distinct = torch.tensor([[3, 7, 0, 1]] * N, device=device)
    kwargs = dict(vocab_size=VOCAB, backend=Backend.TORCH, chunk_size=8)
    a = fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, **kwargs)
    b = fused_linear_sampled_kd_loss(x["hidden"], x["weight"], distinct, probs, **kwargs)
    assert_close(a, b, torch.float32)
    for ga, gb in zip(grad_of(a, x["hidden"], x["weight"]), grad_of(b, x["hidden"], x["weight"])):
        assert_close(ga, gb, torch.float32, grad=True)


def test_chunking_upstream_grad_and_memory(device):
    x = _inputs(54, device)
    ids, _, _ = _target(x, "sample", VOCAB, 1.0)
    kwargs = dict(labels=x["labels"], ce_weight=0.5, vocab_size=VOCAB, reduction=Reduction.SUM, backend=Backend.TORCH)
    base = fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, chunk_size=N, **kwargs)
    with _LargestTensor() as mode:
        loss = 3.0 * fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, chunk_size=7, **kwargs)
        grads = grad_of(loss, x["hidden"], x["weight"])
    assert mode.largest <= max(7 * V, V * H) and mode.largest < N * V, mode.largest
    assert_close(loss, 3.0 * base, torch.float32)
    for got, want in zip(grads, grad_of(base, x["hidden"], x["weight"])):
        assert_close(got, 3.0 * want, torch.float32, grad=True)


def test_bad_arguments_raise(device):
    x = _inputs(55, device)
    ids = torch.zeros(N, K, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, reduction=Reduction.NONE)
    with pytest.raises(ValueError, match="tail needs teacher_probs"):
        fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, tail=True)
    with pytest.raises(ValueError, match="over the student's"):
        fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids[:-1])
    with pytest.raises(ValueError, match="labels"):
        fused_linear_sampled_kd_loss(x["hidden"], x["weight"], ids, ce_weight=1.0)


# --------------------------------------------------------------------------------- vocab_parallel_sample
def test_draws_follow_the_teacher_distribution():
    """1e5 draws per row: every id's frequency within 5 standard errors of P_T, padding never drawn."""
    g = torch.Generator().manual_seed(56)
    logits = torch.randn(3, 40, generator=g) * 2.0
    k = 100_000
    ids, probs = vocab_parallel_sample(logits, k=k, uniforms=torch.rand(3, k, generator=g), temperature=2.0,
                                       vocab_size=33)
    p = torch.softmax(logits[:, :33] / 2.0, dim=-1)
    freq = torch.zeros(3, 40).scatter_add_(1, ids, torch.ones(3, k)) / k
    assert freq[:, 33:].sum() == 0
    stderr = (p * (1 - p) / k).sqrt()
    assert ((freq[:, :33] - p).abs() <= 5 * stderr + 1e-6).all()
    torch.testing.assert_close(probs, p.gather(1, ids), rtol=1e-5, atol=1e-7)


def test_hidden_source_equals_logits_source_and_topk_is_torch_topk():
    x = _inputs(57, torch.device("cpu"))
    h, w = x["hidden"].detach(), x["weight"].detach()
    logits = h @ w.T
    for method in ("sample", "topk"):
        a = vocab_parallel_sample(logits, k=K, method=method, uniforms=x["uniforms"], temperature=1.5, vocab_size=VOCAB)
        b = vocab_parallel_sample(k=K, method=method, hidden=h, weight=w, uniforms=x["uniforms"], temperature=1.5,
                                  vocab_size=VOCAB, chunk_size=5)
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-7)
    p = torch.softmax(logits[:, :VOCAB] / 1.5, dim=-1)
    want_p, want_ids = p.topk(K, dim=-1)
    assert torch.equal(b[0], want_ids)
    torch.testing.assert_close(b[1], want_p, rtol=1e-5, atol=1e-7)


def test_sampler_arguments_raise():
    logits = torch.randn(4, 10)
    with pytest.raises(ValueError, match="uniforms"):
        vocab_parallel_sample(logits, k=3)
    with pytest.raises(ValueError, match="method"):
        vocab_parallel_sample(logits, k=3, method="nucleus")
    with pytest.raises(ValueError, match="at most the vocabulary"):
        vocab_parallel_sample(logits, k=11, method="topk")
