"""Loss terms on vocab-parallel logits (single process, TP=1): padding excluded, KD zero at teacher == student,
the top-k teacher equal to the kernels' top-k loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemo_subnet.kernels import Divergence, topk_kd_loss
from nemo_subnet.training.config import DistillConfig
from nemo_subnet.training.distill import LMOutput, lm_loss, teacher_topk

VOCAB, PADDED = 500, 512


@pytest.fixture
def batch(megatron_runtime):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, PADDED, generator=gen, dtype=torch.float64).float()
    logits[..., VOCAB:] = 30.0  # padding columns that would dominate any softmax that included them
    labels = torch.randint(0, VOCAB, (2, 7), generator=gen)
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0
    device = megatron_runtime.device  # where the last stage's logits live (CUDA on a GPU machine)
    return logits.to(device).requires_grad_(), labels.to(device), mask.to(device)


def test_ce_excludes_padding_and_respects_loss_mask(batch):
    logits, labels, mask = batch
    loss, logs = lm_loss(LMOutput(logits), labels, mask, VOCAB, (1.0, 0.0), DistillConfig())
    per_token = F.cross_entropy(logits[..., :VOCAB].reshape(-1, VOCAB), labels.reshape(-1), reduction="none")
    expected = (per_token * mask.reshape(-1)).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert logits.grad[..., VOCAB:].abs().max() == 0  # padding gets no gradient
    assert "kd" not in logs


@pytest.mark.parametrize("divergence", list(Divergence))
def test_kd_is_zero_when_teacher_equals_student(batch, divergence):
    logits, labels, mask = batch
    distill = DistillConfig(divergence=divergence, temperature=2.0)
    loss, logs = lm_loss(LMOutput(logits), labels, mask, VOCAB, (0.0, 1.0), distill,
                         teacher=LMOutput(logits.detach().clone()))
    assert abs(logs["kd"].item()) < 1e-6 and abs(loss.item()) < 1e-6
    assert logs["ce"] > 1.0  # CE is still measured (and logged) at alpha = 0


def test_alpha_beta_mix(batch):
    logits, labels, mask = batch
    teacher = torch.randn_like(logits).detach()
    _, ce_only = lm_loss(LMOutput(logits), labels, mask, VOCAB, (1.0, 0.0), DistillConfig(), teacher=None)
    loss, logs = lm_loss(LMOutput(logits), labels, mask, VOCAB, (0.3, 0.7), DistillConfig(), teacher=LMOutput(teacher))
    torch.testing.assert_close(loss.detach(), 0.3 * ce_only["ce"] + 0.7 * logs["kd"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("divergence,beta", [(Divergence.FORWARD_KL, 0.5), (Divergence.JSD, 0.3)])
def test_topk_teacher_matches_kernel_topk_loss(batch, divergence, beta):
    logits, labels, mask = batch
    teacher = torch.randn(2, 7, PADDED, dtype=torch.float64).float().to(logits.device)
    teacher[..., VOCAB:] = 50.0  # padding must never enter the teacher's top-k
    values, ids = teacher_topk(LMOutput(teacher), 5, VOCAB)
    assert ids.max() < VOCAB
    distill = DistillConfig(divergence=divergence, beta_jsd=beta, temperature=1.5, top_k=5)
    loss, _ = lm_loss(LMOutput(logits), labels, mask, VOCAB, (0.0, 1.0), distill, teacher=(values, ids))
    expected = topk_kd_loss(logits, values, ids, divergence=divergence, beta=beta, temperature=1.5, loss_mask=mask,
                            vocab_size=VOCAB)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, teacher[..., :VOCAB].topk(5, dim=-1).values)  # the global top-k, no padding


def _gemms_per_call(fn) -> int:
    """aten GEMMs (mm / addmm, in or out of place) that ``fn`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.overloadpacket.__name__ in ("mm", "addmm", "addmm_", "matmul")
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_fused_kd_at_alpha_zero_pays_one_output_gemm_for_the_logged_ce(batch):
    """Default KD (alpha_ce 0) on the fused path, one chunk per micro-batch: the KD op runs the student's and
    the teacher's logits, grad_hidden and grad_weight (4 GEMMs); the CE, computed only for the logs, adds its
    forward matmul and nothing else (before: its gradient too, 3 GEMMs, and a zero-filled [V, h] buffer).
    Validation (no_grad, no teacher): one GEMM (before: 2, grad_weight included)."""
    _, labels, mask = batch
    gen = torch.Generator().manual_seed(1)
    device = labels.device
    hidden = torch.randn(2, 7, 16, generator=gen).to(device).requires_grad_()  # [b, s, h]
    weight = (torch.randn(PADDED, 16, generator=gen) * 0.25).to(device).requires_grad_()  # [v, h]
    teacher = LMOutput(torch.randn(2, 7, 16, generator=gen).to(device), torch.randn(PADDED, 16, generator=gen).to(device))
    student = LMOutput(hidden, weight)
    kd = _gemms_per_call(lambda: lm_loss(student, labels, mask, VOCAB, (0.0, 1.0), DistillConfig(), teacher))
    assert kd == 4 + 1, kd

    def validate():
        with torch.no_grad():
            lm_loss(student, labels, mask, VOCAB, (1.0, 0.0), DistillConfig())

    assert _gemms_per_call(validate) == 1
    loss, logs = lm_loss(student, labels, mask, VOCAB, (0.0, 1.0), DistillConfig(), teacher)
    expected_ce = F.cross_entropy((hidden @ weight.T)[..., :VOCAB].reshape(-1, VOCAB), labels.reshape(-1),
                                  reduction="none")
    torch.testing.assert_close(logs["ce"], (expected_ce * mask.reshape(-1)).sum() / mask.sum(), rtol=1e-5, atol=1e-6)
