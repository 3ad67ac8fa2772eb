"""Sparse top-k distillation on vocabulary-sharded student logits: no dense teacher, ever.

Each tensor-parallel rank holds the student's logit columns [vocab_start_index, vocab_start_index + V/tp)
(Megatron's vocab partition); the teacher is its global top-k per token, (values, global ids) [N, k],
replicated on every rank (from `vocab_parallel_topk`). Communication per call, forward only:

    all-reduce MAX   running maxima of s/T (and s for CE)                         [N, 3]
    all-reduce SUM   sum-exps rescaled to the global maxima, s[label] for CE      [N, 5]
    all-reduce SUM   the student's x = s/T at the teacher's ids, from their owner  [N, k]

after which the loss is the full-vocabulary top-k loss on every rank; backward writes the local shard's
gradient with no communication. With group None this is `topk_kd_loss` (same values and gradients), plus
an optional CE term from the same stats pass.
"""

from __future__ import annotations

import torch

from ._common import Backend, Divergence, LossSpec, Reduction, make_spec, token_weights, use_triton
from ._topk_rows import topk_backward_rows, topk_forward_rows


def topk_spec(divergence, beta, temperature, scale_t2, kd_weight, ce_weight) -> LossSpec:
    """`make_spec` for a top-k teacher: reverse KL (JSD at beta 1) is infinite off the top-k ids."""
    spec = make_spec(divergence, beta, temperature, scale_t2, kd_weight, ce_weight)
    if spec.divergence is Divergence.REVERSE_KL:
        raise ValueError("reverse KL (or JSD at beta=1) is infinite against a top-k teacher "
                         "(P = 0 off its top-k ids where Q > 0): use FORWARD_KL or JSD with beta < 1")
    return spec


def topk_teacher_rows(values, ids, n_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher (values, ids) [..., k] → [n, k] each (ids int64 on `device`), with a shape check."""
    k = values.shape[-1]
    values = values.detach().reshape(-1, k)  # [n, k]
    ids = ids.reshape(-1, ids.shape[-1]).to(device=device, dtype=torch.int64)  # [n, k]
    if values.shape[0] != n_tokens or ids.shape != values.shape:
        raise ValueError(f"teacher values {tuple(values.shape)} / ids {tuple(ids.shape)} must be [..., k] "
                         f"over the student's {n_tokens} tokens")
    return values, ids


class VocabParallelTopKKDLossFunction(torch.autograd.Function):
    r"""Top-k KD (+ CE) loss on a vocab shard of the student logits; gradient w.r.t. that shard.

    Maths of D (forward KL, JSD(beta < 1)) and of dD/ds: `topk_kd_loss.TopKKDLossFunction`. Sharded:
    lse over the full vocabulary from the merged row statistics; x[idx_k] from the rank that owns idx_k
    (SUM all-reduce of [n, k], zeros elsewhere). With a = dD/dlse, b_k = dD/dx[idx_k] (same on every rank):

        dD/ds_j = (a Q_j + sum_k b_k [j == idx_k]) / T       for the local columns j
        CE      C = lse(s) - s[label],   dC/ds_j = softmax(s)_j - [j == label]       (label global)

    loss = sum_tokens w * (kd_scale * D + ce_weight * C); second output the CE term (unweighted, reduced like
    the loss, no gradient). Memory: [N, k] tensors in forward, the [N, V/tp] gradient in backward.
    """

    @staticmethod
    def forward(ctx, student, values, ids, weights, labels, spec: LossSpec, triton_path: bool, n_valid: int,
                vocab_start: int, group, reduction: Reduction):
        loss_rows, ce_rows, saved = topk_forward_rows(
            student, values, ids, weights, labels, spec, triton_path, n_valid, vocab_start, group
        )
        ctx.save_for_backward(student, weights, labels)
        ctx.saved = saved
        ctx.args = (spec, triton_path, n_valid, vocab_start)
        terms = [weights * loss_rows, weights * (ce_rows if ce_rows is not None else torch.zeros_like(loss_rows))]
        loss, ce = (t if reduction is Reduction.NONE else t.sum() for t in terms)
        ctx.mark_non_differentiable(ce)
        return loss, ce

    @staticmethod
    def backward(ctx, grad_output, _grad_ce):
        student, weights, labels = ctx.saved_tensors
        spec, triton_path, n_valid, vocab_start = ctx.args
        grad = topk_backward_rows(student, labels, ctx.saved, grad_output, weights, spec, triton_path,
                                  n_valid, vocab_start)
        return grad, None, None, None, None, None, None, None, None, None, None


def vocab_parallel_topk_kd_loss(
    student_shard: torch.Tensor,
    teacher_topk_values: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    *,
    group: "torch.distributed.ProcessGroup | None" = None,
    vocab_start_index: int = 0,
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
    """Top-k KD loss of student logits [..., V/tp] (this rank's vocab shard) against a global top-k teacher.

    Args:
        teacher_topk_values, teacher_topk_ids: [..., k] the teacher's top-k logits and their global ids
            (distinct, < vocab_size), the same on every rank of `group`.
        group: the tensor-parallel group; None: the logits are the full vocabulary (= `topk_kd_loss`).
        vocab_start_index: global id of this shard's first column.
        labels: global ids (replicated); they mask tokens (ignore_index) and are CE's targets.
        vocab_size: global true vocabulary; columns at or beyond it are padding and excluded.
        ce_weight: adds ce_weight * CE (at T = 1) from the same pass; return_ce also returns that term.
        divergence: FORWARD_KL or JSD with beta < 1. Other arguments as in `kd_loss`.
    The loss is the same on every rank; gradients flow to student_shard. Returns loss or (loss, ce).
    """
    spec = topk_spec(divergence, beta, temperature, scale_t2, kd_weight, ce_weight)
    if ce_weight != 0.0 and labels is None:
        raise ValueError("ce_weight != 0 needs labels")
    if return_ce and ce_weight == 0.0:
        raise ValueError("return_ce needs the CE term in the loss (ce_weight != 0)")
    reduction = Reduction(reduction)
    lead_shape, n_cols = student_shard.shape[:-1], student_shard.shape[-1]
    student = student_shard.reshape(-1, n_cols).contiguous()  # [n, v_local]
    values, ids = topk_teacher_rows(teacher_topk_values, teacher_topk_ids, student.shape[0], student.device)
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
    loss, ce = VocabParallelTopKKDLossFunction.apply(
        student, values, ids, weights, labels, spec, use_triton(student, backend), n_valid,
        vocab_start_index, group, reduction,
    )
    if reduction is Reduction.NONE:
        loss, ce = loss.reshape(lead_shape), ce.reshape(lead_shape)
    return (loss, ce) if return_ce else loss
