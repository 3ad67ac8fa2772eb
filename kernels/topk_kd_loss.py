"""Distillation against a top-k teacher: per token the teacher is given as (values, indices) [..., K].

The teacher distribution is P = softmax(values / T) on its K ids and 0 elsewhere (renormalised top-k, the
form in which teacher logits are usually stored offline). The student Q = softmax(s / T) is over the whole
(valid) vocabulary. Only the student's log-sum-exp and its gradient touch [N, V]; the rest is [N, K] work.
"""

from __future__ import annotations

import torch

from . import _rowwise
from ._common import Backend, Divergence, LossSpec, Reduction, make_spec, token_weights, use_triton


def _topk_divergence(x_k: torch.Tensor, lse: torch.Tensor, values: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    """Per-row divergence [n] from the student's x = s/T at the teacher's ids [n, k] and lse(x) [n]."""
    log_q = x_k - lse[:, None]  # [n, k]
    log_p = torch.log_softmax(values.float() * spec.inv_temp, dim=-1)  # [n, k]
    p = log_p.exp()
    if spec.divergence is Divergence.FORWARD_KL:
        return (p * (log_p - log_q)).sum(-1)
    beta = spec.beta
    q = log_q.exp()
    log_m = torch.logaddexp(spec.log_beta + log_p, spec.log_1m_beta + log_q)  # [n, k]
    # Off the top-k ids P = 0, so M = (1 - beta) Q and each such column adds beta * Q * (-log(1 - beta)).
    tail = beta * (-spec.log_1m_beta) * (1.0 - q.sum(-1))
    return (1 - beta) * (p * (log_p - log_m)).sum(-1) + beta * (q * (log_q - log_m)).sum(-1) + tail


class TopKKDLossFunction(torch.autograd.Function):
    r"""KD loss against a top-k teacher; gradient w.r.t. the student logits.

    With x = s / T, lse = log sum_v exp(x_v), log Q_k = x[idx_k] - lse and P_k = softmax(values / T)_k:

        FORWARD_KL  D = sum_k P_k (log P_k - log Q_k)
        JSD(beta)   M_k = beta P_k + (1 - beta) Q_k on the top-k ids, M = (1 - beta) Q elsewhere:
                    D = (1 - beta) sum_k P_k (log P_k - log M_k) + beta sum_k Q_k (log Q_k - log M_k)
                        - beta log(1 - beta) (1 - sum_k Q_k)
        REVERSE_KL  infinite wherever Q > 0 = P, so not offered (nor JSD at beta = 1).

    D depends on s only through x[idx] ([n, k]) and lse ([n]), so with a = dD/dlse and b_k = dD/dx[idx_k]
    (autograd on the [n, k] tensors): dD/ds_j = (a Q_j + sum_k b_k [j == idx_k]) / T. The dense part a Q is
    the row-grad kernel (forward-KL variant without teacher, which writes c * Q), the sparse part a
    scatter-add. Memory: the [N, V] gradient only, in backward.
    """

    @staticmethod
    def forward(ctx, student, values, indices, weights, spec: LossSpec, triton_path: bool, n_valid: int, reduction):
        stats = _rowwise.row_stats(student, None, weights, None, spec, triton_path, n_valid)
        lse = stats[:, 0] + torch.log(stats[:, 1])  # [n]
        with torch.enable_grad():
            x_k = (student.detach().gather(1, indices).float() * spec.inv_temp).requires_grad_()
            lse_leaf = lse.detach().requires_grad_()
            per_row = spec.kd_scale * _topk_divergence(x_k, lse_leaf, values, spec)
            d_x, d_lse = torch.autograd.grad((weights * per_row).sum(), (x_k, lse_leaf))
        ctx.save_for_backward(student, indices, lse, d_x, d_lse)
        ctx.args = (spec, triton_path, n_valid)
        per_token = weights * per_row.detach()
        return per_token if reduction is Reduction.NONE else per_token.sum()

    @staticmethod
    def backward(ctx, grad_output):
        student, indices, lse, d_x, d_lse = ctx.saved_tensors
        spec, triton_path, n_valid = ctx.args
        go = grad_output.to(torch.float32)
        go_row = go[:, None] if go.dim() == 1 else go
        zeros = torch.zeros_like(lse)
        rows = torch.stack([lse, zeros, zeros, zeros, go * d_lse * spec.inv_temp, zeros], dim=1)
        dense_spec = LossSpec(Divergence.FORWARD_KL, 0.0, spec.temperature, 1.0, 0.0)  # writes c * Q
        grad = _rowwise.row_grad(student, None, None, rows, dense_spec, triton_path, n_valid)
        grad.scatter_add_(1, indices, (go_row * d_x * spec.inv_temp).to(grad.dtype))
        return grad, None, None, None, None, None, None, None


def topk_kd_loss(
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
    backend: Backend = Backend.AUTO,
) -> torch.Tensor:
    """KD loss of student logits [..., V] against a top-k teacher (values, indices) [..., K].

    Indices are distinct vocabulary ids < vocab_size. Divergence FORWARD_KL or JSD with beta < 1; other
    arguments as in `kd_loss` (labels only mask tokens here).
    """
    spec = make_spec(divergence, beta, temperature, scale_t2, kd_weight, 0.0)
    if spec.divergence is Divergence.REVERSE_KL:
        raise ValueError("reverse KL (or JSD at beta=1) is infinite against a top-k teacher")
    reduction = Reduction(reduction)
    lead_shape, n_cols, k = student_logits.shape[:-1], student_logits.shape[-1], teacher_topk_logits.shape[-1]
    student = student_logits.reshape(-1, n_cols).contiguous()  # [n, v]
    values = teacher_topk_logits.detach().reshape(-1, k)  # [n, k]
    indices = teacher_topk_indices.reshape(-1, k).to(device=student.device, dtype=torch.int64)  # [n, k]
    if values.shape[0] != student.shape[0] or indices.shape != values.shape:
        raise ValueError("teacher values / indices must be [..., K] with the student's leading shape")
    n_valid = n_cols if vocab_size is None else min(n_cols, vocab_size)
    labels = None if labels is None else labels.reshape(-1).to(student.device)
    weights = token_weights(
        student.shape[0], student.device, labels, ignore_index, loss_mask, reduction,
        dtype=torch.promote_types(student.dtype, torch.float32),
    )
    loss = TopKKDLossFunction.apply(
        student, values, indices, weights, spec, use_triton(student, backend), n_valid, reduction
    )
    return loss.reshape(lead_shape) if reduction is Reduction.NONE else loss
