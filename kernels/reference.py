"""Naive pure-torch definitions of every loss, written straight from the formulas with autograd.

These hold several [N, V] tensors and are meant for checking (tests, benchmarks' "eager torch" provider)
and for reading; the runtime CPU path is the kernels' torch mirror in `_rowwise.py`. JSD needs no special
case at beta = 0 or 1: log M is a logsumexp over (log beta + log P, log(1 - beta) + log Q).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import Divergence, Reduction


def _log_beta_pair(beta: float) -> tuple[float, float]:
    return (math.log(beta) if beta > 0 else -math.inf), (math.log1p(-beta) if beta < 1 else -math.inf)


def divergence_reference(
    log_q: torch.Tensor, log_p: torch.Tensor, divergence: Divergence, beta: float
) -> torch.Tensor:
    """Per-row divergence [N] from student / teacher log-probs [N, V] (see `Divergence`)."""
    divergence = Divergence(divergence)
    if divergence is Divergence.FORWARD_KL:
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    if divergence is Divergence.REVERSE_KL:
        return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    lb, l1b = _log_beta_pair(beta)
    log_m = torch.logsumexp(torch.stack([log_p + lb, log_q + l1b]), dim=0)
    kl_pm = F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)
    kl_qm = F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(-1)
    return (1 - beta) * kl_pm + beta * kl_qm


def _reduce(per_token: torch.Tensor, weights: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    reduction = Reduction(reduction)
    if reduction is Reduction.NONE:
        return per_token * weights
    total = (per_token * weights).sum()
    if reduction is Reduction.SUM:
        return total
    denom = weights.sum()
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def _weights(n, device, labels, ignore_index, loss_mask):
    w = torch.ones(n, device=device, dtype=torch.float64)
    if loss_mask is not None:
        w = w * loss_mask.reshape(-1).double()
    if labels is not None:
        w = w * (labels.reshape(-1) != ignore_index).double()
    return w


def kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: Divergence = Divergence.FORWARD_KL,
    beta: float = 0.5,
    temperature: float = 1.0,
    scale_t2: bool = True,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    loss_mask: torch.Tensor | None = None,
    reduction: Reduction = Reduction.MEAN,
    vocab_size: int | None = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """Same contract as `kd_loss`, computed naively (at least fp32; float64 stays float64)."""
    lead, v = student_logits.shape[:-1], student_logits.shape[-1]
    vocab_size = v if vocab_size is None else vocab_size
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    s = student_logits.reshape(-1, v)[:, :vocab_size].to(dtype)  # [n, vocab_size]: padding dropped
    t = teacher_logits.detach().reshape(-1, v)[:, :vocab_size].to(dtype)
    log_q = torch.log_softmax(s / temperature, dim=-1)
    log_p = torch.log_softmax(t / temperature, dim=-1)
    per_token = kd_weight * (temperature**2 if scale_t2 else 1.0) * divergence_reference(log_q, log_p, divergence, beta)
    if ce_weight != 0.0:
        safe = torch.where(labels.reshape(-1) == ignore_index, 0, labels.reshape(-1))
        per_token = per_token + ce_weight * F.cross_entropy(s, safe, reduction="none")
    w = _weights(s.shape[0], s.device, labels, ignore_index, loss_mask).to(dtype)
    out = _reduce(per_token, w, reduction)
    return out.reshape(lead) if Reduction(reduction) is Reduction.NONE else out


def topk_kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    *,
    divergence: Divergence = Divergence.FORWARD_KL,
    beta: float = 0.5,
    temperature: float = 1.0,
    scale_t2: bool = True,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    loss_mask: torch.Tensor | None = None,
    reduction: Reduction = Reduction.MEAN,
    vocab_size: int | None = None,
    kd_weight: float = 1.0,
) -> torch.Tensor:
    """Same contract as `topk_kd_loss`: teacher P = softmax(values / T) on its top-k ids, 0 elsewhere."""
    lead, v = student_logits.shape[:-1], student_logits.shape[-1]
    vocab_size = v if vocab_size is None else vocab_size
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    k = teacher_topk_logits.shape[-1]
    s = student_logits.reshape(-1, v)[:, :vocab_size].to(dtype)
    log_q = torch.log_softmax(s / temperature, dim=-1)  # [n, vocab]
    p_k = torch.softmax(teacher_topk_logits.detach().reshape(-1, k).to(dtype) / temperature, dim=-1)
    p = torch.zeros_like(log_q).scatter(1, teacher_topk_indices.reshape(-1, k), p_k)  # dense P, 0 off top-k
    q = log_q.exp()
    divergence = Divergence(divergence)
    if divergence is Divergence.REVERSE_KL or (divergence is Divergence.JSD and beta == 1.0):
        raise ValueError("reverse KL is infinite for a top-k (sparse) teacher")
    b = 0.0 if divergence is Divergence.FORWARD_KL else beta
    log_m = log_q if b == 0.0 else torch.log(b * p + (1 - b) * q)
    kl_pm = torch.where(p > 0, p * (torch.log(p) - log_m), torch.zeros_like(p)).sum(-1)
    kl_qm = (q * (log_q - log_m)).sum(-1)
    per_token = kd_weight * (temperature**2 if scale_t2 else 1.0) * ((1 - b) * kl_pm + b * kl_qm)
    w = _weights(s.shape[0], s.device, labels, ignore_index, loss_mask).to(dtype)
    out = _reduce(per_token, w, reduction)
    return out.reshape(lead) if Reduction(reduction) is Reduction.NONE else out


def sampled_kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_probs: torch.Tensor | None = None,
    *,
    tail: bool = False,
    temperature: float = 1.0,
    scale_t2: bool = True,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    loss_mask: torch.Tensor | None = None,
    reduction: Reduction = Reduction.MEAN,
    vocab_size: int | None = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """Same contract as `fused_linear_sampled_kd_loss`, on full logits: the dense target P^ (draws' counts / K, or
    the given masses) scattered into [n, vocab], CE(P^, softmax(s / T)); with the tail, the leftover mass against
    the student's mass off the ids (its mask built densely)."""
    lead, v = student_logits.shape[:-1], student_logits.shape[-1]
    vocab_size = v if vocab_size is None else vocab_size
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    k = teacher_ids.shape[-1]
    s = student_logits.reshape(-1, v)[:, :vocab_size].to(dtype)  # [n, vocab]
    ids = teacher_ids.reshape(-1, k).long()
    mass = torch.full(ids.shape, 1.0 / k, dtype=dtype, device=s.device) if teacher_probs is None else (
        teacher_probs.reshape(-1, k).to(dtype))
    p = torch.zeros_like(s).scatter_add(1, ids, mass)  # [n, vocab]: the dense empirical / top-k target
    log_q = torch.log_softmax(s / temperature, dim=-1)
    per_token = -(p * log_q).sum(-1)
    if tail:
        off = torch.ones_like(s).scatter(1, ids, 0.0)  # 1 off the ids
        q_tail = (log_q.exp() * off).sum(-1)
        p_tail = (1.0 - mass.sum(-1)).clamp(min=0.0)
        per_token = per_token - torch.where(p_tail > 0, p_tail * torch.log(q_tail), 0.0)
    per_token = kd_weight * (temperature**2 if scale_t2 else 1.0) * per_token
    if ce_weight != 0.0:
        safe = torch.where(labels.reshape(-1) == ignore_index, 0, labels.reshape(-1))
        per_token = per_token + ce_weight * F.cross_entropy(s, safe, reduction="none")
    w = _weights(s.shape[0], s.device, labels, ignore_index, loss_mask).to(dtype)
    out = _reduce(per_token, w, reduction)
    return out.reshape(lead) if Reduction(reduction) is Reduction.NONE else out
