"""Logit-level KD loss: Triton kernels and torch mirror vs torch's kl_div and the naive reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kd_testing import BACKENDS, assert_close, grad_of, logits_pair

from nemo_subnet.kernels import Backend, Divergence, Reduction, kd_loss
from nemo_subnet.kernels.reference import kd_loss_reference

N, V, VOCAB = 41, 277, 263  # odd sizes; columns >= VOCAB are padding
DIVERGENCES = [
    pytest.param(Divergence.FORWARD_KL, 0.5, id="fkl"),
    pytest.param(Divergence.REVERSE_KL, 0.5, id="rkl"),
    *[pytest.param(Divergence.JSD, b, id=f"jsd{b}") for b in (0.0, 0.1, 0.5, 0.9, 1.0)],
]


def _mask_and_labels(n: int, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, VOCAB, (n,), generator=g)
    labels[::7] = -100
    loss_mask = (torch.rand(n, generator=g) > 0.2).float()
    return labels.to(device), loss_mask.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_forward_kl_matches_torch_kl_div(backend, temperature, device):
    student, teacher = logits_pair(N, V, seed=0, device=device)
    loss = kd_loss(student, teacher, temperature=temperature, backend=backend)
    expected = F.kl_div(
        F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    assert_close(loss, expected, torch.float32)
    assert_close(grad_of(loss, student), grad_of(expected, student), torch.float32, grad=True)


def _reference_grid():
    """Torch mirror: every divergence x T in {1, 2}. Triton (slow interpreter): every divergence at T = 2
    (its own CE log-sum-exp), and forward KL / JSD(0.5) at T = 1 (CE shares the student's)."""
    for div in DIVERGENCES:
        (divergence, beta), name = div.values, div.id
        for temperature in (1.0, 2.0):
            yield pytest.param(Backend.TORCH, temperature, divergence, beta, id=f"torch-T{temperature:g}-{name}")
            if temperature == 2.0 or name in ("fkl", "jsd0.5"):
                yield pytest.param(Backend.TRITON, temperature, divergence, beta, marks=pytest.mark.triton,
                                   id=f"triton-T{temperature:g}-{name}")


@pytest.mark.parametrize("backend,temperature,divergence,beta", list(_reference_grid()))
def test_matches_reference_with_masks_padding_and_ce(backend, temperature, divergence, beta, device):
    student, teacher = logits_pair(N, V, seed=1, device=device)
    labels, loss_mask = _mask_and_labels(N, seed=2, device=device)
    kwargs = dict(divergence=divergence, beta=beta, temperature=temperature, labels=labels, loss_mask=loss_mask,
                  vocab_size=VOCAB, ce_weight=0.3, kd_weight=0.7)
    loss = kd_loss(student, teacher, backend=backend, **kwargs)
    expected = kd_loss_reference(student, teacher, **kwargs)
    assert_close(loss, expected, torch.float32)
    grad = grad_of(loss, student)
    assert_close(grad, grad_of(expected, student), torch.float32, grad=True)
    assert torch.all(grad[:, VOCAB:] == 0)


@pytest.mark.parametrize("beta,limit", [(1e-7, Divergence.FORWARD_KL), (1 - 1e-7, Divergence.REVERSE_KL)])
def test_jsd_is_continuous_at_both_ends(beta, limit, device):
    student, teacher = logits_pair(N, V, seed=3, device=device)
    near = kd_loss(student, teacher, divergence=Divergence.JSD, beta=beta, backend=Backend.TORCH)
    at = kd_loss(student, teacher, divergence=limit, backend=Backend.TORCH)
    torch.testing.assert_close(near, at, rtol=1e-4, atol=1e-6)


def test_symmetric_jsd_is_symmetric(device):
    student, teacher = logits_pair(N, V, seed=4, device=device)
    a = kd_loss(student, teacher, divergence=Divergence.JSD, beta=0.5, backend=Backend.TORCH)
    b = kd_loss(teacher, student.detach(), divergence=Divergence.JSD, beta=0.5, backend=Backend.TORCH)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert a > 1e-3  # the inputs differ: symmetry is not 0 == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", list(Reduction))
def test_reductions_on_3d_logits(backend, reduction, device):
    student, teacher = logits_pair(3 * 7, 53, seed=5, device=device)
    student = student.detach().reshape(3, 7, 53).requires_grad_()  # [s, b, v]
    teacher = teacher.reshape(3, 7, 53)
    loss_mask = torch.ones(3, 7, device=device)
    loss_mask[1, 2:5] = 0
    kwargs = dict(divergence=Divergence.JSD, beta=0.3, temperature=2.0, loss_mask=loss_mask, reduction=reduction)
    loss = kd_loss(student, teacher, backend=backend, **kwargs)
    expected = kd_loss_reference(student, teacher, **kwargs)
    assert loss.shape == expected.shape == ((3, 7) if reduction is Reduction.NONE else ())
    assert_close(loss, expected, torch.float32)
    go = torch.rand_like(expected) + 0.5  # a non-trivial upstream gradient
    assert_close(grad_of(loss, student, grad_output=go), grad_of(expected, student, grad_output=go),
                 torch.float32, grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", [Reduction.MEAN, Reduction.SUM])
def test_all_masked_rows_give_zero_not_nan(backend, reduction, device):
    student, teacher = logits_pair(9, 31, seed=6, device=device)
    labels = torch.full((9,), -100, device=device)
    labels[4] = 3  # one valid token; every other row is masked
    loss = kd_loss(student, teacher, labels=labels, ce_weight=1.0, reduction=reduction, backend=backend,
                   divergence=Divergence.JSD, beta=0.5)
    grad = grad_of(loss, student)
    assert torch.isfinite(loss) and torch.all(torch.isfinite(grad))
    assert torch.all(grad[labels == -100] == 0) and grad[4].abs().sum() > 0
    none_valid = kd_loss(student, teacher, loss_mask=torch.zeros(9, device=device), reduction=reduction,
                         backend=backend)
    assert none_valid.item() == 0.0
    assert torch.all(grad_of(none_valid, student) == 0)


def _extreme_pair(device):
    g = torch.Generator().manual_seed(7)
    sign = torch.randint(0, 2, (6, 67), generator=g) * 2.0 - 1.0
    student = sign * 1e4
    teacher = torch.roll(sign, 1, dims=1) * 1e4
    # rows 4, 5: one dominant shared token, everything else very negative in both (P and Q underflow)
    student[4:] = -1e4
    teacher[4:] = -1e4 + torch.randn(2, 67, generator=g)
    student[4:, 3] = teacher[4:, 3] = 1e4
    return student.to(device).requires_grad_(), teacher.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divergence,beta", [DIVERGENCES[0], DIVERGENCES[1], DIVERGENCES[3], DIVERGENCES[4]])
def test_extreme_logits_are_finite_and_exact(backend, divergence, beta, device):
    student, teacher = _extreme_pair(device)
    kwargs = dict(divergence=divergence, beta=beta, reduction=Reduction.SUM)
    loss = kd_loss(student, teacher, backend=backend, **kwargs)
    grad = grad_of(loss, student)
    assert torch.isfinite(loss) and torch.all(torch.isfinite(grad))
    s64 = student.detach().double().requires_grad_()
    expected = kd_loss_reference(s64, teacher.double(), **kwargs)
    # fp32 resolves a log-sum-exp near 1e4 to ulp(1e4) / 2 = 5e-4, so log-probs (and Q, P relative to
    # themselves) carry that error, in any fp32 implementation: compare at that resolution.
    tol = 1e4 * 2.0**-23 * 16
    torch.testing.assert_close(loss.double(), expected, rtol=tol, atol=tol)
    expected_grad = grad_of(expected, s64)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=tol, atol=tol * float(expected_grad.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(backend, dtype, device):
    student, teacher = logits_pair(N, V, seed=8, dtype=dtype, device=device)
    labels, loss_mask = _mask_and_labels(N, seed=9, device=device)
    kwargs = dict(divergence=Divergence.JSD, beta=0.9, temperature=2.0, labels=labels, ce_weight=0.5)
    loss = kd_loss(student, teacher, backend=backend, **kwargs)
    s32 = student.detach().float().requires_grad_()
    expected = kd_loss_reference(s32, teacher.float(), **kwargs)  # same values, upcast: fp32 maths
    assert loss.dtype == torch.float32
    assert_close(loss, expected, dtype)
    grad = grad_of(loss, student)
    assert grad.dtype == dtype
    assert_close(grad, grad_of(expected, s32), dtype, grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_columns_are_ignored(backend, device):
    student, teacher = logits_pair(N, V, seed=10, device=device)
    with torch.no_grad():  # garbage in the padding must not matter
        student[:, VOCAB:] = 1e4
        teacher[:, VOCAB:] = float("nan")
    loss = kd_loss(student, teacher, vocab_size=VOCAB, divergence=Divergence.REVERSE_KL, backend=backend)
    trimmed = student.detach()[:, :VOCAB].clone().requires_grad_()
    expected = kd_loss(trimmed, teacher[:, :VOCAB], divergence=Divergence.REVERSE_KL, backend=backend)
    assert_close(loss, expected, torch.float32)
    grad = grad_of(loss, student)
    assert torch.all(grad[:, VOCAB:] == 0)
    assert_close(grad[:, :VOCAB], grad_of(expected, trimmed), torch.float32, grad=True)


@pytest.mark.parametrize("divergence,beta", [DIVERGENCES[0], DIVERGENCES[1], DIVERGENCES[3]])
def test_gradcheck_float64(divergence, beta, device):
    g = torch.Generator().manual_seed(11)
    student = torch.randn(3, 7, generator=g, dtype=torch.float64).to(device).requires_grad_()
    teacher = torch.randn(3, 7, generator=g, dtype=torch.float64).to(device)
    labels = torch.tensor([1, -100, 4], device=device)
    kwargs = dict(divergence=divergence, beta=beta, temperature=2.0, labels=labels, ce_weight=0.5, vocab_size=6)
    assert torch.autograd.gradcheck(lambda s: kd_loss_reference(s, teacher, **kwargs), (student,))
    # the closed-form gradient of the autograd Function (torch mirror keeps float64)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, backend=Backend.TORCH, **kwargs), (student,))


def test_no_grad_forward_and_teacher_gets_no_grad(device):
    student, teacher = logits_pair(5, 11, seed=12, device=device)
    teacher.requires_grad_()
    with torch.no_grad():
        value = kd_loss(student, teacher, backend=Backend.TORCH)
    loss = kd_loss(student, teacher, backend=Backend.TORCH)
    assert loss.item() == value.item()
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_bad_arguments_raise(device):
    student, teacher = logits_pair(5, 11, seed=13, device=device)
    with pytest.raises(ValueError):
        kd_loss(student, teacher[:, :10])
    with pytest.raises(ValueError):
        kd_loss(student, teacher, ce_weight=1.0)
    with pytest.raises(ValueError):
        kd_loss(student, teacher, divergence=Divergence.JSD, beta=1.5)
    with pytest.raises(ValueError):
        kd_loss(student, teacher, divergence="sinkhorn")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", [Reduction.MEAN, Reduction.NONE])
def test_return_ce_gives_the_ce_term_without_changing_the_loss(backend, reduction, device):
    student, teacher = logits_pair(N, V, seed=5, device=device)
    labels, loss_mask = _mask_and_labels(N, seed=5, device=device)
    kwargs = dict(labels=labels, loss_mask=loss_mask, vocab_size=VOCAB, temperature=2.0, reduction=reduction,
                  kd_weight=0.7, ce_weight=0.3)
    loss, ce = kd_loss(student, teacher, backend=backend, return_ce=True, **kwargs)
    plain = kd_loss(student, teacher, backend=backend, **kwargs)
    assert_close(loss, plain, torch.float32)
    assert not ce.requires_grad
    expected_ce = kd_loss_reference(student, teacher, **{**kwargs, "kd_weight": 0.0, "ce_weight": 1.0})
    assert_close(ce, expected_ce, torch.float32)
    assert_close(grad_of(loss.sum(), student), grad_of(plain.sum(), student), torch.float32, grad=True)
    with pytest.raises(ValueError, match="return_ce needs"):
        kd_loss(student, teacher, labels=labels, return_ce=True, backend=backend)
