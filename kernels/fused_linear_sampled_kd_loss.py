"""Fused output layer + distillation against a sparse (cached) teacher: the student's cross-entropy against a
target distribution given per token as K (id, mass) slots, from the student's final hidden states and its
(vocab-sharded) output weight, chunked over tokens, never [N, V] at once and never a dense teacher.

Two targets, both what `vocab_parallel_sample` writes into a teacher cache:

- sampled ("Sparse Logit Sampling", Anshumann et al., ACL 2025): K ids drawn from the teacher's P_T =
  softmax(t / T) with replacement, each slot of mass 1/K (a repeated id is its count): the empirical
  distribution P^. Its CE is an unbiased estimate of forward-KL KD's gradient (see the Function's docstring).
- top-k with the tail: the teacher's k most likely ids with their exact masses P_T(id) and one more bin, the
  rest of the vocabulary, of mass 1 - sum(masses) (Megatron's "ghost token"). Biased; kept for comparison.

Per chunk the passes are `_topk_rows`' (shared with the top-k ops): the stats pass of the student (its
log-sum-exp over the full vocabulary, merged over the TP group; + CE), the student's x = s / T at the target
ids from the rank that owns each id (one all-reduce of [C, K]), the [C, K] divergence and its gradient by
autograd on those small tensors, then the dense gradient a Q by the row-grad kernel and the sparse part
scatter-added at the ids this rank owns. The chunk loop is `fused_linear_kd_loss.chunked_linear_forward`.
New work over the CE-only fused op: a gather and a scatter of [C, K] and one [C, K] all-reduce per chunk;
the Triton kernels are the existing row kernels (stats without teacher, grad without teacher), so there is
no new kernel to compile.
"""

from __future__ import annotations

import torch

from . import _topk_rows
from ._common import Backend, Divergence, LossSpec, Reduction, make_spec, token_weights, use_triton
from ._linear_grads import detach_outside_grad_mode
from .fused_linear_kd_loss import chunked_linear_backward, chunked_linear_forward, default_chunk_size

_TAIL_FLOOR = 1e-6  # smallest student tail mass 1 - sum Q_j the tail bin's log sees (fp32 can round it to 0)


def sparse_target_ce(x_k: torch.Tensor, lse: torch.Tensor, probs: torch.Tensor | None, tail: bool) -> torch.Tensor:
    """Per-row CE [n] of the sparse target against the student: x_k = s/T at the target ids [n, K], lse of s/T [n].

    probs None: K draws of mass 1/K each; else the slots' masses [n, K] (sum <= 1), and with ``tail`` the
    remaining mass 1 - sum(probs) is one more bin whose student mass is 1 - sum_j Q_j (ids must be distinct)."""
    log_q = x_k - lse[:, None]  # [n, K]
    if probs is None:
        return -log_q.mean(dim=-1)
    probs = probs.float()
    loss = -(probs * log_q).sum(dim=-1)
    if tail:
        p_tail = (1.0 - probs.sum(dim=-1)).clamp(min=0.0)  # [n]
        q_tail = (1.0 - log_q.exp().sum(dim=-1)).clamp(min=_TAIL_FLOOR)  # [n]
        loss = loss - torch.where(p_tail > 0, p_tail * torch.log(q_tail), 0.0)
    return loss


class FusedLinearSampledKDLossFunction(torch.autograd.Function):
    r"""loss = sum_tokens w * (kd_scale * D + ce_weight * CE), kd_scale = kd_weight * T^2, Q_T from s = h W^T.

    With x = s / T, lse = log sum_v exp(x_v) over the full (valid) vocabulary, log Q_j = x[id_j] - lse, and the
    target's slots (id_j, p_j), j = 1..K:

        D = - sum_j p_j log Q_j                         (sampled: p_j = 1/K, sum_j p_j = 1)
          - p_tail log(1 - sum_j Q_j)                   (top-k with the tail bin: p_tail = 1 - sum_j p_j)

    Sampled, its gradient is dD/ds_v = (Q_v - P^_v) / T with P^_v = (count of v among the K draws) / K.
    Unbiased: every draw is v with probability P_T(v), so E[P^] = P_T and, D being linear in P^,
        E[D] = CE(P_T, Q_T) = KL(P_T || Q_T) + H(P_T)      E[dD/ds] = (Q_T - P_T) / T = d KL(P_T || Q_T) / ds,
    the full forward-KL KD gradient at temperature T, for any K (the variance falls as 1/K); by the chain rule
    the same holds for every parameter of the student (its backward is linear in dD/ds for a fixed forward).
    Top-k with the tail is the CE of the (k+1)-bin coarse-grainings of P_T and Q_T: every tail id gets the same
    relative pull, so its expectation is not the KD gradient.

    D depends on s only through x[ids] [n, K] and lse [n]: with a = dD/dlse and b_j = dD/dx[id_j] (autograd on
    the small tensors), dD/ds_v = (a Q_v + sum_j b_j [v == id_j]) / T; the dense part a Q is the row-grad
    kernel, the sparse part a scatter-add (repeated ids add up). CE at T = 1 from the same stats pass.

    Chunking (`chunked_linear_forward`): grad_hidden[c] = G_c W, grad_weight = sum_c G_c^T h_c, all in forward;
    backward scales them by the upstream scalar. Memory beyond inputs and returned gradients: C * V/tp in the
    input dtype (the chunk's logits, overwritten by G_c) + C * (8 + 4 K) floats; the CPU torch mirror adds a few
    fp32 [C, V/tp] temporaries. Vocab parallel: per chunk all-reduce MAX [C, 3], SUM [C, 5], SUM [C, K]; every
    rank runs the same chunks. Second output: the CE term (unweighted, reduced like the loss, no gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, ids, probs, labels, weights, spec: LossSpec, triton_path: bool, n_valid: int,
                chunk_size: int, vocab_start: int, group, tail: bool):
        one = torch.ones((), device=hidden.device, dtype=torch.float32)  # upstream grad, applied in backward

        def rows(s_c, start, end, want_grad):
            w_c = weights[start:end]
            l_c = None if labels is None else labels[start:end]
            p_c = None if probs is None else probs[start:end]
            loss_rows, ce_rows, saved = _topk_rows.topk_forward_rows(
                s_c, None, ids[start:end], w_c, l_c, spec, triton_path, n_valid, vocab_start, group,
                divergence=lambda x_k, lse: sparse_target_ce(x_k, lse, p_c, tail),
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
        return (*chunked_linear_backward(ctx, grad_output), *([None] * 11))


def fused_linear_sampled_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
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
    chunk_size: int | None = None,
    backend: Backend = Backend.AUTO,
    group: "torch.distributed.ProcessGroup | None" = None,
    vocab_start_index: int = 0,
    return_ce: bool = False,
):
    """KD (+ CE) loss of the student's final hidden states [..., H] and output weight (shard) [V/tp, H] against a
    sparse teacher target: teacher_ids [..., K] global ids (< vocab_size; any integer dtype), the same on every
    rank of `group`; teacher_probs None for K sampled draws (mass 1/K each), or the slots' masses [..., K];
    tail: the mass 1 - sum(teacher_probs) is one more bin, the rest of the vocabulary (distinct ids needed).

    reduction MEAN or SUM (gradients are computed in forward). temperature: the T the target was built at;
    scale_t2 multiplies the KD term by T^2 (gradient scale of KD at T = 1). Gradients flow to student_hidden
    (this rank's partial sum at TP > 1, summed by Megatron's `copy_to_tensor_model_parallel_region` in
    backward) and student_weight. Other arguments as in `fused_linear_kd_loss`. Returns loss or (loss, ce).
    """
    reduction = Reduction(reduction)
    if reduction is Reduction.NONE:
        raise ValueError("fused_linear_sampled_kd_loss computes gradients in forward: reduction must be MEAN or SUM")
    if ce_weight != 0.0 and labels is None:
        raise ValueError("ce_weight != 0 needs labels")
    if return_ce and ce_weight == 0.0:
        raise ValueError("return_ce needs the CE term in the loss (ce_weight != 0)")
    if tail and teacher_probs is None:
        raise ValueError("tail needs teacher_probs (the tail bin's mass is 1 - sum(teacher_probs))")
    spec = make_spec(Divergence.FORWARD_KL, 0.0, temperature, scale_t2, kd_weight, ce_weight)
    student_hidden, student_weight = detach_outside_grad_mode(student_hidden, student_weight)  # see fused_linear_kd_loss
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])  # [n, h]
    n_tokens, vocab = hidden.shape[0], student_weight.shape[0]
    if student_weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"student_weight {tuple(student_weight.shape)} does not match hidden size {hidden.shape[1]}")
    k = teacher_ids.shape[-1]
    ids = teacher_ids.reshape(-1, k).to(device=hidden.device, dtype=torch.int64)  # [n, K]
    if ids.shape[0] != n_tokens:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)} must be [..., K] over the student's {n_tokens} tokens")
    probs = None
    if teacher_probs is not None:
        probs = teacher_probs.detach().reshape(-1, k).to(device=hidden.device, dtype=torch.float32)  # [n, K]
        if probs.shape != ids.shape:
            raise ValueError(f"teacher_probs {tuple(teacher_probs.shape)} must match teacher_ids {tuple(teacher_ids.shape)}")
    if labels is not None:
        labels = labels.reshape(-1).to(device=hidden.device, dtype=torch.int64)
        if labels.numel() != n_tokens:
            raise ValueError(f"labels has {labels.numel()} tokens, hidden {n_tokens}")
    vocab_end = vocab_start_index + vocab if vocab_size is None else vocab_size
    n_valid = max(0, min(vocab, vocab_end - vocab_start_index))
    weights = token_weights(n_tokens, hidden.device, labels, ignore_index, loss_mask, reduction)
    chunk = default_chunk_size(n_tokens, vocab) if chunk_size is None else int(chunk_size)
    loss, ce = FusedLinearSampledKDLossFunction.apply(
        hidden, student_weight, ids, probs, labels, weights, spec, use_triton(hidden, backend), n_valid, chunk,
        vocab_start_index, group, bool(tail),
    )
    return (loss, ce) if return_ce else loss
