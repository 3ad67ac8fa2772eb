"""Fused output layer + KD loss: values and gradients vs the naive reference on materialised logits,
chunking invariance, and no [N, V] tensor ever created."""

from __future__ import annotations

import pytest
import torch
from kd_testing import BACKENDS, assert_close, grad_of
from torch.utils._python_dispatch import TorchDispatchMode

from nemo_subnet.kernels import Backend, Divergence, Reduction, fused_linear_kd_loss
from nemo_subnet.kernels.reference import kd_loss_reference

N, H, H_T, V, VOCAB = 41, 24, 16, 277, 263


def _inputs(seed: int, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.3).to(device=device, dtype=dtype).requires_grad_()
    teacher_hidden = torch.randn(N, H_T, generator=g).to(device=device, dtype=dtype)
    teacher_weight = (torch.randn(V, H_T, generator=g) * 0.4).to(device=device, dtype=dtype)
    labels = torch.randint(0, VOCAB, (N,), generator=g)
    labels[::6] = -100
    return hidden, weight, teacher_hidden, teacher_weight, labels.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("teacher_source", ["hidden", "logits"])
@pytest.mark.parametrize("divergence,beta", [
    (Divergence.FORWARD_KL, 0.5), (Divergence.REVERSE_KL, 0.5), (Divergence.JSD, 0.5),
])
def test_matches_reference(backend, teacher_source, divergence, beta, device):
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=30, device=device)
    teacher = dict(teacher_hidden=t_hidden, teacher_weight=t_weight) if teacher_source == "hidden" else \
        dict(teacher_logits=t_hidden @ t_weight.T)
    kwargs = dict(divergence=divergence, beta=beta, temperature=2.0, labels=labels, vocab_size=VOCAB,
                  ce_weight=0.4, kd_weight=0.6)
    loss = fused_linear_kd_loss(hidden, weight, chunk_size=16, backend=backend, **teacher, **kwargs)
    expected = kd_loss_reference(hidden @ weight.T, t_hidden @ t_weight.T, **kwargs)
    assert_close(loss, expected, torch.float32)
    for got, want in zip(grad_of(loss, hidden, weight), grad_of(expected, hidden, weight)):
        assert_close(got, want, torch.float32, grad=True)


@pytest.mark.parametrize("chunk_size", [1, 7, 41, None])
def test_chunking_does_not_change_the_result(chunk_size, device):
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=31, device=device)
    kwargs = dict(teacher_hidden=t_hidden, teacher_weight=t_weight, divergence=Divergence.JSD, beta=0.2,
                  labels=labels, ce_weight=1.0, reduction=Reduction.SUM, backend=Backend.TORCH)
    base = fused_linear_kd_loss(hidden, weight, chunk_size=N, **kwargs)
    loss = fused_linear_kd_loss(hidden, weight, chunk_size=chunk_size, **kwargs)
    assert_close(loss, base, torch.float32)
    for got, want in zip(grad_of(loss, hidden, weight), grad_of(base, hidden, weight)):
        assert_close(got, want, torch.float32, grad=True)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materialises_n_by_v(device):
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=32, device=device)
    with _LargestTensor() as mode:
        loss = fused_linear_kd_loss(hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight,
                                    divergence=Divergence.JSD, labels=labels, ce_weight=1.0, chunk_size=8,
                                    backend=Backend.TORCH)
        loss.backward()
    assert mode.largest <= max(8 * V * 2, V * H), mode.largest  # a chunk's [8, V] (x2 stacked) or grad_weight
    assert mode.largest < N * V


def test_bf16_close_to_fp32(device):
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=33, device=device)
    kwargs = dict(divergence=Divergence.FORWARD_KL, labels=labels, ce_weight=0.5, backend=Backend.TORCH, chunk_size=16)
    loss32 = fused_linear_kd_loss(hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight, **kwargs)
    h16, w16 = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    loss16 = fused_linear_kd_loss(h16, w16, teacher_hidden=t_hidden.bfloat16(), teacher_weight=t_weight.bfloat16(), **kwargs)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=1e-3)  # bf16 logits: ~3 significant digits
    for got, want in zip(grad_of(loss16, h16, w16), grad_of(loss32, hidden, weight)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))


def test_upstream_grad_scales_gradients(device):
    hidden, weight, t_hidden, t_weight, _ = _inputs(seed=34, device=device)
    kwargs = dict(teacher_hidden=t_hidden, teacher_weight=t_weight, backend=Backend.TORCH)
    g1 = grad_of(fused_linear_kd_loss(hidden, weight, **kwargs), hidden, weight)
    g3 = grad_of(3.0 * fused_linear_kd_loss(hidden, weight, **kwargs), hidden, weight)
    for a, b in zip(g1, g3):
        assert_close(b, 3.0 * a, torch.float32, grad=True)


def test_bad_arguments_raise(device):
    hidden, weight, t_hidden, t_weight, labels = _inputs(seed=35, device=device)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_kd_loss(hidden, weight, teacher_logits=t_hidden @ t_weight.T, reduction=Reduction.NONE)
    with pytest.raises(ValueError, match="teacher"):
        fused_linear_kd_loss(hidden, weight, teacher_hidden=t_hidden)
    with pytest.raises(ValueError, match="labels"):
        fused_linear_kd_loss(hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight, ce_weight=1.0)
