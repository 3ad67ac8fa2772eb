"""Top-k teacher KD loss vs the dense naive reference, and vs the full-logit loss when k covers the vocab."""

from __future__ import annotations

import pytest
import torch
from kd_testing import BACKENDS, assert_close, grad_of, logits_pair

from nemo_subnet.kernels import Backend, Divergence, Reduction, kd_loss, topk_kd_loss
from nemo_subnet.kernels.reference import topk_kd_loss_reference

N, V, VOCAB, K = 37, 211, 200, 9


def _topk_teacher(n: int, vocab: int, k: int, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, k, generator=g) * 3
    indices = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(n)])
    return values.to(device), indices.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divergence,beta,temperature", [
    (Divergence.FORWARD_KL, 0.5, 1.0), (Divergence.FORWARD_KL, 0.5, 2.0),
    (Divergence.JSD, 0.1, 1.0), (Divergence.JSD, 0.5, 2.0), (Divergence.JSD, 0.0, 2.0),
])
def test_matches_dense_reference(backend, divergence, beta, temperature, device):
    student, _ = logits_pair(N, V, seed=20, device=device)
    values, indices = _topk_teacher(N, VOCAB, K, seed=21, device=device)
    loss_mask = torch.ones(N, device=device)
    loss_mask[5:9] = 0
    kwargs = dict(divergence=divergence, beta=beta, temperature=temperature, vocab_size=VOCAB, loss_mask=loss_mask)
    loss = topk_kd_loss(student, values, indices, backend=backend, **kwargs)
    expected = topk_kd_loss_reference(student, values, indices, **kwargs)
    assert_close(loss, expected, torch.float32)
    grad = grad_of(loss, student)
    assert_close(grad, grad_of(expected, student), torch.float32, grad=True)
    assert torch.all(grad[:, VOCAB:] == 0) and torch.all(grad[5:9] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divergence,beta", [(Divergence.FORWARD_KL, 0.5), (Divergence.JSD, 0.7)])
def test_full_topk_equals_dense_loss(backend, divergence, beta, device):
    student, teacher = logits_pair(11, 23, seed=22, device=device)
    g = torch.Generator().manual_seed(22)
    order = torch.stack([torch.randperm(23, generator=g) for _ in range(11)]).to(device)  # every id, shuffled
    kwargs = dict(divergence=divergence, beta=beta, temperature=2.0, reduction=Reduction.SUM)
    loss = topk_kd_loss(student, teacher.gather(1, order), order, backend=backend, **kwargs)
    dense = kd_loss(student, teacher, backend=Backend.TORCH, **kwargs)
    assert_close(loss, dense, torch.float32)
    assert_close(grad_of(loss, student), grad_of(dense, student), torch.float32, grad=True)


def test_reduction_none_with_upstream_grad(device):
    student, _ = logits_pair(N, V, seed=23, device=device)
    values, indices = _topk_teacher(N, V, K, seed=24, device=device)
    kwargs = dict(divergence=Divergence.JSD, beta=0.4, reduction=Reduction.NONE)
    loss = topk_kd_loss(student, values, indices, backend=Backend.TORCH, **kwargs)
    expected = topk_kd_loss_reference(student, values, indices, **kwargs)
    assert_close(loss, expected, torch.float32)
    go = torch.rand(N, device=device) + 0.5
    assert_close(grad_of(loss, student, grad_output=go), grad_of(expected, student, grad_output=go),
                 torch.float32, grad=True)


@pytest.mark.parametrize("divergence,beta", [(Divergence.REVERSE_KL, 0.5), (Divergence.JSD, 1.0)])
def test_reverse_kl_is_rejected(divergence, beta, device):
    student, _ = logits_pair(4, 13, seed=25, device=device)
    values, indices = _topk_teacher(4, 13, 3, seed=26, device=device)
    with pytest.raises(ValueError, match="infinite"):
        topk_kd_loss(student, values, indices, divergence=divergence, beta=beta)
