"""Fused output layer + sparse top-k distillation (+ CE): from the student's hidden states and its
(vocab-sharded) output weight, chunked over tokens, against a teacher given only as (values, global ids).

Per chunk of C tokens: s_c = h_c W_local^T into one [C, V/tp] buffer (input dtype, fp32 accumulation); the
top-k passes of `_topk_rows.py` (stats merged over the TP group, x at the teacher's ids all-reduced, the
[C, k] divergence) give the loss, then overwrite the buffer with d loss / d s_c in place; two matmuls turn
it into the chunk's grad_hidden rows and accumulate grad_weight (fp32, `_linear_grads.py`). As in
`fused_linear_kd_loss`, everything happens in forward, and outside grad mode only the forward matmul runs;
backward only scales the stored gradients by the upstream scalar.
"""

from __future__ import annotations

import torch

from . import _topk_rows
from ._common import Backend, Divergence, LossSpec, Reduction, token_weights, use_triton
from ._linear_grads import detach_outside_grad_mode
from .fused_linear_kd_loss import chunked_linear_backward, chunked_linear_forward, default_chunk_size
from .vocab_parallel_topk_kd_loss import topk_spec, topk_teacher_rows


class FusedLinearTopKKDLossFunction(torch.autograd.Function):
    r"""loss = sum_tokens w * (kd_scale * D(P_topk || Q) + ce_weight * CE), Q from s = h W^T.

    Maths of D and dD/ds: `vocab_parallel_topk_kd_loss.VocabParallelTopKKDLossFunction`. With
    G_c = d loss / d s_c on this rank's vocab shard:

        grad_hidden[c] = G_c W_local        grad_weight = sum_c G_c^T h_c   (the local shard's gradient)

    At TP > 1 grad_hidden is this rank's partial sum of G W = sum_ranks G_r W_r; the caller's
    `copy_to_tensor_model_parallel_region` before the output layer all-reduces it in backward.

    Communication per chunk: all-reduce MAX [C, 3], SUM [C, 5], SUM [C, k]; every rank must run the same
    chunks (same N and chunk_size). Memory bound beyond inputs and returned gradients:
        C * V/tp * bytes(dtype)     the chunk's logits buffer (the gradient is written into it)
      + C * (8 + 4 k) floats        row statistics and the [C, k] top-k terms
    plus, on the CPU torch mirror, a few fp32 [C, V/tp] temporaries. Second output: the CE term (unweighted,
    reduced like the loss, no gradient; 0 without CE).
    """

    @staticmethod
    def forward(ctx, hidden, weight, values, ids, labels, weights, spec: LossSpec, triton_path: bool,
                n_valid: int, chunk_size: int, vocab_start: int, group):
        one = torch.ones((), device=hidden.device, dtype=torch.float32)  # upstream grad, applied in backward

        def rows(s_c, start, end, want_grad):
            w_c = weights[start:end]
            l_c = None if labels is None else labels[start:end]
            loss_rows, ce_rows, saved = _topk_rows.topk_forward_rows(
                s_c, values[start:end], ids[start:end], w_c, l_c, spec, triton_path, n_valid, vocab_start, group
            )
            ce = None if ce_rows is None else (w_c * ce_rows).sum()
            g_c = None
            if want_grad:
                g_c = _topk_rows.topk_backward_rows(s_c, l_c, saved, one, w_c, spec, triton_path, n_valid,
                                                    vocab_start, out=s_c)
            return (w_c * loss_rows).sum(), ce, g_c

        return chunked_linear_forward(ctx, hidden, weight, chunk_size, rows)

    @staticmethod
    def backward(ctx, grad_output, _grad_ce):
        return (*chunked_linear_backward(ctx, grad_output), None, None, None, None, None, None, None, None, None, None)


def fused_linear_topk_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
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
    chunk_size: int | None = None,
    backend: Backend = Backend.AUTO,
    return_ce: bool = False,
):
    """Top-k KD (+ CE) loss from the student's final hidden states [..., H] and output weight (shard) [V/tp, H].

    teacher_topk_values / teacher_topk_ids [..., k]: the teacher's global top-k (e.g. `vocab_parallel_topk`),
    replicated over `group`. reduction MEAN or SUM (gradients are computed in forward). Gradients flow to
    student_hidden (this rank's partial sum at TP > 1) and student_weight. Other arguments as in
    `vocab_parallel_topk_kd_loss`; chunk_size as in `fused_linear_kd_loss`. Returns loss or (loss, ce).
    """
    reduction = Reduction(reduction)
    if reduction is Reduction.NONE:
        raise ValueError("fused_linear_topk_kd_loss computes gradients in forward: reduction must be MEAN or SUM")
    spec = topk_spec(divergence, beta, temperature, scale_t2, kd_weight, ce_weight)
    if ce_weight != 0.0 and labels is None:
        raise ValueError("ce_weight != 0 needs labels")
    if return_ce and ce_weight == 0.0:
        raise ValueError("return_ce needs the CE term in the loss (ce_weight != 0)")
    student_hidden, student_weight = detach_outside_grad_mode(student_hidden, student_weight)  # see fused_linear_kd_loss
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])  # [n, h]
    n_tokens, vocab = hidden.shape[0], student_weight.shape[0]
    if student_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"student_weight {tuple(student_weight.shape)} does not match hidden size {hidden.shape[1]}")
    values, ids = topk_teacher_rows(teacher_topk_values, teacher_topk_ids, n_tokens, hidden.device)
    if labels is not None:
        labels = labels.reshape(-1).to(device=hidden.device, dtype=torch.int64)
        if labels.numel() != n_tokens:
            raise ValueError(f"labels has {labels.numel()} tokens, hidden {n_tokens}")
    vocab_end = vocab_start_index + vocab if vocab_size is None else vocab_size
    n_valid = max(0, min(vocab, vocab_end - vocab_start_index))
    weights = token_weights(n_tokens, hidden.device, labels, ignore_index, loss_mask, reduction)
    chunk = default_chunk_size(n_tokens, vocab) if chunk_size is None else int(chunk_size)
    loss, ce = FusedLinearTopKKDLossFunction.apply(
        hidden, student_weight, values, ids, labels, weights, spec, use_triton(hidden, backend), n_valid,
        chunk, vocab_start_index, group,
    )
    return (loss, ce) if return_ce else loss
