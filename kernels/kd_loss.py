"""Logit-level distillation loss: forward KL, reverse KL, generalized JSD(beta), optional CE, from
student and teacher logits [..., V] — on one device, or sharded over the vocabulary (`group`).

Kernels and their torch mirrors are in `_rowwise.py`; this file holds the autograd Function (its
docstring has the maths) and the functional API.
"""

from __future__ import annotations

import torch

from . import _rowwise
from ._common import Backend, Divergence, LossSpec, Reduction, make_spec, token_weights, use_triton


class LogitKDLossFunction(torch.autograd.Function):
    r"""Distillation loss on logits; gradient w.r.t. the student logits only (the teacher is constant).

    Per token, with temperature T, x = s / T, y = t / T, Q = softmax(x) (student), P = softmax(y) (teacher),
    both over the valid vocabulary (columns >= vocab_size excluded), log-probs computed as x - lse(x):

        FORWARD_KL  D = sum_v P_v (log P_v - log Q_v)
        REVERSE_KL  D = sum_v Q_v (log Q_v - log P_v)
        JSD(beta)   M = beta P + (1 - beta) Q,  D = (1 - beta) KL(P||M) + beta KL(Q||M)
                    (beta = 0: forward KL, beta = 1: reverse KL; see `Divergence`)
        CE          C = lse(s) - s[label]                       (at T = 1, as in pretraining)

        loss_token = kd_weight * (T^2 if scale_t2 else 1) * D + ce_weight * C
        loss       = sum_tokens w * loss_token,   w = loss_mask * [label != ignore_index] (/ sum w for MEAN)

    Gradient. For any D(log Q), d D / d x_j = g_j - Q_j sum_k g_k with g_k = d D / d log Q_k (the
    log-softmax Jacobian), and d / d s = (1 / T) d / d x:

        FORWARD_KL  d D / d x_j = Q_j - P_j
        REVERSE_KL  d D / d x_j = Q_j (log Q_j - log P_j - D)
        JSD         d D / d x_j = Q_j (beta (log Q_j - log M_j) - (1 - beta) R_j - G),
                    R_j = ((1 - beta) P_j + beta Q_j) / M_j,  G = sum_k Q_k (beta (log Q_k - log M_k) - (1 - beta) R_k)
        CE          d C / d s_j = softmax(s)_j - [j == label]

    Numerics. All arithmetic is fp32 whatever the input dtype. log M is a log-add-exp of (log beta + log P,
    log(1 - beta) + log Q), never log(P + Q) after exponentiation, so tokens where both log-probs are very
    negative (P and Q underflow to 0) give finite values — the NaN of computing log(M) from underflowed
    probabilities cannot occur; every p * (log p - log m) term is masked to 0 where p == 0.
    The forward / reverse KL numerators are accumulated online in the same pass as the log-sum-exps.

    Memory / traffic: forward reads s and t once (twice for JSD) and keeps 4 floats per token; backward
    reads them once more and writes the gradient (the only [N, V] allocation). With `group`, each rank
    holds a vocabulary shard; three [N, <=5] all-reduces in forward (two for the KLs), none in backward.
    """

    @staticmethod
    def forward(ctx, student, teacher, weights, labels, spec: LossSpec, triton_path: bool,
                n_valid: int, vocab_start: int, group, reduction: Reduction):
        loss_rows, saved, ce_rows = _rowwise.forward_rows(
            student, teacher, weights, labels, spec, triton_path, n_valid, vocab_start, group
        )
        ctx.save_for_backward(student, teacher, weights, labels, saved)
        ctx.args = (spec, triton_path, n_valid, vocab_start)
        # second output: the unweighted CE term, reduced like the loss, for logging (no gradient)
        terms = [weights * loss_rows, weights * (ce_rows if ce_rows is not None else torch.zeros_like(loss_rows))]
        loss, ce = (t if reduction is Reduction.NONE else t.sum() for t in terms)
        ctx.mark_non_differentiable(ce)
        return loss, ce

    @staticmethod
    def backward(ctx, grad_output, _grad_ce):
        student, teacher, weights, labels, saved = ctx.saved_tensors
        spec, triton_path, n_valid, vocab_start = ctx.args
        coef = grad_output * weights  # scalar or per-token upstream grad, no host sync
        grad = _rowwise.backward_rows(student, teacher, labels, saved, coef, spec, triton_path, n_valid, vocab_start)
        return grad, None, None, None, None, None, None, None, None, None


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    divergence: Divergence,
    beta: float,
    temperature: float,
    scale_t2: bool,
    labels: torch.Tensor | None,
    ignore_index: int,
    loss_mask: torch.Tensor | None,
    reduction: Reduction,
    vocab_size: int | None,
    kd_weight: float,
    ce_weight: float,
    backend: Backend,
    group=None,
    vocab_start_index: int = 0,
    return_ce: bool = False,
):
    """Shared body of `kd_loss` and `vocab_parallel_kd_loss` (see those for the arguments)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    if ce_weight != 0.0 and labels is None:
        raise ValueError("ce_weight != 0 needs labels")
    if return_ce and ce_weight == 0.0:
        raise ValueError("return_ce needs the CE term in the loss (ce_weight != 0)")
    reduction = Reduction(reduction)
    spec = make_spec(divergence, beta, temperature, scale_t2, kd_weight, ce_weight)
    lead_shape, n_cols = student_logits.shape[:-1], student_logits.shape[-1]
    student = student_logits.reshape(-1, n_cols).contiguous()  # [n, v]
    teacher = teacher_logits.detach().reshape(-1, n_cols).contiguous()  # [n, v]
    if labels is not None:
        labels = labels.reshape(-1).to(device=student.device, dtype=torch.int64)
        if labels.numel() != student.shape[0]:
            raise ValueError(f"labels has {labels.numel()} tokens, logits {student.shape[0]}")
    vocab_end = vocab_start_index + n_cols if vocab_size is None else vocab_size
    n_valid = max(0, min(n_cols, vocab_end - vocab_start_index))
    weights = token_weights(
        student.shape[0], student.device, labels, ignore_index, loss_mask, reduction,
        dtype=torch.promote_types(student.dtype, torch.float32),
    )
    loss, ce = LogitKDLossFunction.apply(
        student, teacher, weights, labels, spec, use_triton(student, backend),
        n_valid, vocab_start_index, group, reduction,
    )
    if reduction is Reduction.NONE:
        loss, ce = loss.reshape(lead_shape), ce.reshape(lead_shape)
    return (loss, ce) if return_ce else loss


def kd_loss(
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
    backend: Backend = Backend.AUTO,
    return_ce: bool = False,
):
    """Distillation loss between student and teacher logits [..., V]; see `LogitKDLossFunction`.

    Args:
        divergence, beta: which divergence; beta is JSD's skew (ignored by the KLs).
        temperature: T; scale_t2 multiplies the KD term by T^2 (Hinton et al. 2015: keeps gradient size
            independent of T). Default True.
        labels: [...] token ids; tokens equal to ignore_index are masked, and they are CE's targets.
        loss_mask: [...] float or bool per-token weight (Megatron's loss_mask).
        reduction: MEAN over valid (weighted) tokens, SUM, or NONE → [...].
        vocab_size: true vocabulary size; columns >= vocab_size are padding and excluded.
        kd_weight, ce_weight: loss = kd_weight * KD + ce_weight * CE.
        backend: AUTO (Triton on CUDA), TRITON or TORCH.
        return_ce: also return the CE term (unweighted, reduced like the loss, no gradient), computed in
            the same pass, for logging; needs ce_weight != 0.
    Gradients flow to student_logits only. Returns the loss, or (loss, ce) with return_ce.
    """
    return logit_kd_loss(
        student_logits, teacher_logits, divergence=divergence, beta=beta, temperature=temperature,
        scale_t2=scale_t2, labels=labels, ignore_index=ignore_index, loss_mask=loss_mask,
        reduction=reduction, vocab_size=vocab_size, kd_weight=kd_weight, ce_weight=ce_weight, backend=backend,
        return_ce=return_ce,
    )
