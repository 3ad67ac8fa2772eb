"""Fused-output ops at TP=1 (group None): CE-only and return_ce of fused_linear_kd_loss, the teacher top-k
selection, and the sparse top-k KD ops, against pure-torch references on materialised logits and against
the existing ops (`topk_kd_loss`: bit-identical). The TP=2 equalities are in test_fused_output_tp2.py."""

from __future__ import annotations

import pytest
import torch
from fused_output_testing import ce_reference, full_topk, make_inputs, topk_reference
from kd_testing import BACKENDS, assert_close, grad_of
from test_fused_linear_kd_loss import _LargestTensor

from nemo_subnet.kernels import (Backend, Divergence, Reduction, fused_linear_kd_loss, fused_linear_topk_kd_loss,
                                 topk_kd_loss, vocab_parallel_topk, vocab_parallel_topk_kd_loss)
from nemo_subnet.kernels.reference import kd_loss_reference
from nemo_subnet.runtime import compute_device

N, H, V, VOCAB, K = 37, 24, 1024, 1001, 16  # odd token count, padded vocabulary (1001 -> 1024)
N_TRITON, V_TRITON, VOCAB_TRITON = 11, 192, 181  # the interpreter is slow: smaller under Triton
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 2e-2, 5e-2  # bf16 logits (~3 significant digits) and bf16 matmuls


def _shape(backend):
    return (N_TRITON, V_TRITON, VOCAB_TRITON) if backend is Backend.TRITON else (N, V, VOCAB)


def _inputs(backend, seed, dtype=torch.float32):
    n, v, vocab = _shape(backend)
    return make_inputs(n, H, v, vocab, seed, compute_device(), dtype), vocab


def _close_bf16(got, want, grad=False):
    rtol = BF16_GRAD_RTOL if grad else BF16_LOSS_RTOL
    atol = rtol * float(want.abs().max()) if grad else 1e-3
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------- fused_linear_kd_loss: CE
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", [Reduction.MEAN, Reduction.SUM])
def test_fused_linear_ce_only_matches_cross_entropy(backend, reduction):
    x, vocab = _inputs(backend, seed=40)
    kwargs = dict(labels=x["labels"], loss_mask=x["loss_mask"], reduction=reduction)
    loss, ce = fused_linear_kd_loss(x["hidden"], x["weight"], ce_weight=0.7, vocab_size=vocab, chunk_size=8,
                                    backend=backend, return_ce=True, **kwargs)
    expected = ce_reference(x["hidden"] @ x["weight"].T, vocab_size=vocab, **kwargs)
    assert_close(loss, 0.7 * expected, torch.float32)
    assert_close(ce, expected, torch.float32)
    for got, want in zip(grad_of(loss, x["hidden"], x["weight"]), grad_of(0.7 * expected, x["hidden"], x["weight"])):
        assert_close(got, want, torch.float32, grad=True)


def test_fused_linear_ce_only_bf16():
    x, vocab = _inputs(Backend.TORCH, seed=41, dtype=torch.bfloat16)
    loss = fused_linear_kd_loss(x["hidden"], x["weight"], labels=x["labels"], ce_weight=1.0, vocab_size=vocab,
                                chunk_size=16, backend=Backend.TORCH)
    h32, w32 = (x[k].detach().float().requires_grad_() for k in ("hidden", "weight"))
    expected = ce_reference(h32 @ w32.T, x["labels"], vocab_size=vocab)
    _close_bf16(loss, expected)
    for got, want in zip(grad_of(loss, x["hidden"], x["weight"]), grad_of(expected, h32, w32)):
        assert got.dtype == torch.bfloat16
        _close_bf16(got, want, grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_kd_return_ce_is_the_ce_term(backend):
    x, vocab = _inputs(backend, seed=42)
    kwargs = dict(divergence=Divergence.JSD, beta=0.3, temperature=2.0, labels=x["labels"], vocab_size=vocab,
                  ce_weight=0.4, kd_weight=0.6)
    loss, ce = fused_linear_kd_loss(x["hidden"], x["weight"], teacher_hidden=x["teacher_hidden"],
                                    teacher_weight=x["teacher_weight"], chunk_size=8, backend=backend,
                                    return_ce=True, **kwargs)
    logits = x["hidden"] @ x["weight"].T
    assert_close(loss, kd_loss_reference(logits, x["teacher_hidden"] @ x["teacher_weight"].T, **kwargs), torch.float32)
    assert_close(ce, ce_reference(logits, x["labels"], vocab_size=vocab), torch.float32)


# ------------------------------------------------------------------------------- vocab_parallel_topk
@pytest.mark.parametrize("source", ["logits", "hidden"])
def test_topk_selection_matches_torch_topk(source):
    x, vocab = _inputs(Backend.TORCH, seed=43)
    logits = x["teacher_hidden"] @ x["teacher_weight"].T  # [n, v]; padding columns are the largest
    if source == "logits":
        values, ids = vocab_parallel_topk(logits, k=K, vocab_size=vocab)
    else:
        values, ids = vocab_parallel_topk(k=K, hidden=x["teacher_hidden"], weight=x["teacher_weight"],
                                          vocab_size=vocab, chunk_size=7)
    want_values, want_ids = full_topk(logits, K, vocab)
    assert torch.equal(ids, want_ids) and ids.dtype == torch.int64 and int(ids.max()) < vocab
    torch.testing.assert_close(values, want_values, rtol=1e-6, atol=1e-6)  # chunked matmul: last-bit differences


# ------------------------------------------------------------------------ sparse top-k KD (group None)
TOPK_CASES = [(Divergence.FORWARD_KL, 0.5, 1.0), (Divergence.FORWARD_KL, 0.5, 2.0), (Divergence.JSD, 0.3, 2.0)]


def _teacher_topk(x, vocab, k=K):
    return full_topk(x["teacher_hidden"] @ x["teacher_weight"].T, k, vocab)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divergence,beta,temperature", TOPK_CASES)
def test_topk_kd_on_logits_is_topk_kd_loss_bit_for_bit(backend, divergence, beta, temperature):
    x, vocab = _inputs(backend, seed=44)
    values, ids = _teacher_topk(x, vocab)
    student = (x["hidden"] @ x["weight"].T).detach().requires_grad_()
    kwargs = dict(divergence=divergence, beta=beta, temperature=temperature, vocab_size=vocab,
                  loss_mask=x["loss_mask"], labels=x["labels"], backend=backend)
    new = vocab_parallel_topk_kd_loss(student, values, ids, **kwargs)
    old = topk_kd_loss(student, values, ids, **kwargs)
    assert torch.equal(new, old)
    assert torch.equal(grad_of(new, student), grad_of(old, student))


@pytest.mark.parametrize("reduction", [Reduction.MEAN, Reduction.NONE])
def test_topk_kd_on_logits_with_ce_matches_reference(reduction):
    x, vocab = _inputs(Backend.TORCH, seed=45)
    values, ids = _teacher_topk(x, vocab)
    student = (x["hidden"] @ x["weight"].T).detach().requires_grad_()
    kwargs = dict(divergence=Divergence.JSD, beta=0.5, temperature=2.0, vocab_size=vocab, labels=x["labels"],
                  loss_mask=x["loss_mask"], reduction=reduction, ce_weight=0.5)
    loss, ce = vocab_parallel_topk_kd_loss(student, values, ids, backend=Backend.TORCH, return_ce=True, **kwargs)
    expected = topk_reference(student, values, ids, **kwargs)
    assert_close(loss, expected, torch.float32)
    keep = {k: kwargs[k] for k in ("labels", "loss_mask", "reduction")}
    assert_close(ce, ce_reference(student, vocab_size=vocab, **keep), torch.float32)
    go = torch.rand(loss.shape, generator=torch.Generator().manual_seed(0)).to(loss.device) + 0.5
    grad = grad_of(loss, student, grad_output=go)
    assert_close(grad, grad_of(expected, student, grad_output=go), torch.float32, grad=True)
    assert torch.all(grad[:, vocab:] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divergence,beta,temperature", TOPK_CASES)
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_fused_linear_topk_matches_reference(backend, divergence, beta, temperature, ce_weight):
    x, vocab = _inputs(backend, seed=46)
    values, ids = _teacher_topk(x, vocab)
    kwargs = dict(divergence=divergence, beta=beta, temperature=temperature, vocab_size=vocab, labels=x["labels"],
                  loss_mask=x["loss_mask"], ce_weight=ce_weight)
    loss = fused_linear_topk_kd_loss(x["hidden"], x["weight"], values, ids, chunk_size=8, backend=backend, **kwargs)
    leaves = (x["hidden"], x["weight"])
    expected = topk_reference(x["hidden"] @ x["weight"].T, values, ids, **kwargs)
    assert_close(loss, expected, torch.float32)
    grads = grad_of(loss, *leaves)
    for got, want in zip(grads, grad_of(expected, *leaves)):
        assert_close(got, want, torch.float32, grad=True)
    if ce_weight == 0.0:  # and the logits op on materialised logits (the existing topk_kd_loss)
        kwargs.pop("ce_weight")
        logits_loss = topk_kd_loss(x["hidden"] @ x["weight"].T, values, ids, backend=backend, **kwargs)
        assert_close(loss, logits_loss, torch.float32)
        for got, want in zip(grads, grad_of(logits_loss, *leaves)):
            assert_close(got, want, torch.float32, grad=True)


def test_fused_linear_topk_bf16():
    x, vocab = _inputs(Backend.TORCH, seed=47, dtype=torch.bfloat16)
    values, ids = _teacher_topk(x, vocab)
    kwargs = dict(divergence=Divergence.FORWARD_KL, temperature=2.0, vocab_size=vocab, labels=x["labels"],
                  ce_weight=0.5)
    loss = fused_linear_topk_kd_loss(x["hidden"], x["weight"], values, ids, chunk_size=16, backend=Backend.TORCH, **kwargs)
    assert loss.dtype == torch.float32
    h32, w32 = (x[k].detach().float().requires_grad_() for k in ("hidden", "weight"))
    expected = topk_reference(h32 @ w32.T, values.float(), ids, **kwargs)
    _close_bf16(loss, expected)
    for got, want in zip(grad_of(loss, x["hidden"], x["weight"]), grad_of(expected, h32, w32)):
        assert got.dtype == torch.bfloat16
        _close_bf16(got, want, grad=True)


@pytest.mark.parametrize("chunk_size", [1, 10, None])
def test_fused_linear_topk_chunking_does_not_change_the_result(chunk_size):
    x, vocab = _inputs(Backend.TORCH, seed=48)
    values, ids = _teacher_topk(x, vocab)
    kwargs = dict(divergence=Divergence.JSD, beta=0.2, vocab_size=vocab, labels=x["labels"], ce_weight=1.0,
                  reduction=Reduction.SUM, backend=Backend.TORCH)
    base = fused_linear_topk_kd_loss(x["hidden"], x["weight"], values, ids, chunk_size=N, **kwargs)
    loss = fused_linear_topk_kd_loss(x["hidden"], x["weight"], values, ids, chunk_size=chunk_size, **kwargs)
    assert_close(loss, base, torch.float32)
    for got, want in zip(grad_of(loss, x["hidden"], x["weight"]), grad_of(base, x["hidden"], x["weight"])):
        assert_close(got, want, torch.float32, grad=True)


def test_fused_topk_path_never_materialises_n_by_v():
    x, vocab = _inputs(Backend.TORCH, seed=49)
    with _LargestTensor() as mode:
        values, ids = vocab_parallel_topk(k=K, hidden=x["teacher_hidden"], weight=x["teacher_weight"],
                                          vocab_size=vocab, chunk_size=8)
        loss = fused_linear_topk_kd_loss(x["hidden"], x["weight"], values, ids, labels=x["labels"], ce_weight=1.0,
                                         divergence=Divergence.JSD, vocab_size=vocab, chunk_size=8,
                                         backend=Backend.TORCH)
        loss.backward()
    assert mode.largest <= max(8 * V * 2, V * H), mode.largest  # a chunk's [8, V] (x2 stacked) or grad_weight
    assert mode.largest < N * V


def test_bad_arguments_raise():
    x, vocab = _inputs(Backend.TORCH, seed=50)
    values, ids = _teacher_topk(x, vocab)
    h, w, logits = x["hidden"], x["weight"], x["hidden"] @ x["weight"].T
    for divergence, beta in [(Divergence.REVERSE_KL, 0.5), (Divergence.JSD, 1.0)]:
        with pytest.raises(ValueError, match="infinite"):
            vocab_parallel_topk_kd_loss(logits, values, ids, divergence=divergence, beta=beta)
        with pytest.raises(ValueError, match="infinite"):
            fused_linear_topk_kd_loss(h, w, values, ids, divergence=divergence, beta=beta)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_topk_kd_loss(h, w, values, ids, reduction=Reduction.NONE)
    with pytest.raises(ValueError, match="return_ce"):
        fused_linear_topk_kd_loss(h, w, values, ids, return_ce=True)
    with pytest.raises(ValueError, match="labels"):
        vocab_parallel_topk_kd_loss(logits, values, ids, ce_weight=1.0)
    with pytest.raises(ValueError, match=r"\[\.\.\., k\]"):
        fused_linear_topk_kd_loss(h, w, values[:-1], ids[:-1])
    with pytest.raises(ValueError, match="ce_weight"):
        fused_linear_kd_loss(h, w, labels=x["labels"])  # no teacher and no CE: nothing to compute
    with pytest.raises(ValueError, match="teacher"):
        fused_linear_kd_loss(h, w, teacher_logits=logits, teacher_hidden=x["teacher_hidden"],
                             teacher_weight=x["teacher_weight"])
    with pytest.raises(ValueError, match="k must be"):
        vocab_parallel_topk(logits, k=vocab + 1, vocab_size=vocab)
    with pytest.raises(ValueError, match="either"):
        vocab_parallel_topk(logits, k=K, hidden=h, weight=w)
    with pytest.raises(ValueError, match="either"):
        vocab_parallel_topk(k=K, hidden=h)
