"""Fused output layer + distillation loss: from hidden states and output-layer weights, chunked over
tokens, never holding an [N, V] tensor.

Per chunk of C tokens: student logits h_c W^T and teacher logits (h'_c W'^T, or a slice of given teacher
logits) go into two [C, V] buffers in the input dtype (cuBLAS, fp32 accumulation); the row kernels of
`_rowwise.py` compute the loss and then overwrite the student buffer with d loss / d logits in place;
two more matmuls turn it into the chunk's grad_hidden rows and accumulate grad_weight (in fp32,
`_linear_grads.py`). Everything happens in forward (recomputing the matmuls in backward would cost 2 more of
the 6 N*V*H matmuls); backward only scales the stored gradients by the upstream scalar. Outside grad mode
(the logged CE at alpha_ce = 0, validation, the search) only the forward matmul(s) run per chunk.

Vocab parallel (`group`): the weight is this rank's shard of Megatron's vocab partition, the row statistics of
each chunk are merged over the group exactly as in `vocab_parallel_kd_loss`, so every rank gets the
full-vocabulary loss. Without a teacher the op is a chunked (vocab-parallel) cross-entropy.
"""

from __future__ import annotations

import torch

from . import _rowwise
from ._common import Backend, Divergence, LossSpec, Reduction, make_spec, token_weights, use_triton
from ._linear_grads import ChunkGrads, detach_outside_grad_mode, scaled_grads

_CHUNK_ELEMENTS = 1 << 27  # logits per chunk buffer: 256 MiB in bf16; large enough that matmuls run at speed


def default_chunk_size(n_tokens: int, vocab: int) -> int:
    """Tokens per chunk: about 2^27 logits, a multiple of 256 (matmul tiles), at least 256."""
    return max(1, min(n_tokens, max(256, (_CHUNK_ELEMENTS // vocab) // 256 * 256)))


class FusedLinearKDLossFunction(torch.autograd.Function):
    r"""loss = sum_tokens w * (kd_scale * D(P || Q) + ce_weight * CE), Q from s = h W^T, P from the teacher.

    Maths of D, CE and d loss / d s: see `kd_loss.LogitKDLossFunction`. With G_c = d loss / d s_c for chunk c:

        grad_hidden[c] = G_c W            grad_weight = sum_c G_c^T h_c

    Memory bound (beyond inputs and the gradients it returns, grad_hidden [N, H] and grad_weight [V, H]):
        C * V * (bytes(student dtype) + bytes(teacher dtype))   the two chunk logits buffers
      + C * 16 floats                                           per-row statistics
    On CUDA nothing else scales with V (the gradient is written into the student buffer, in place); the CPU
    torch mirror adds a few fp32 [C, V] temporaries. At C = 1024, V = 128256, bf16: 0.5 GiB of buffers.
    grad_weight accumulates in fp32 ([V, H] fp32, plus one bounded block of each chunk's product in bf16)
    and is rounded to the weight's dtype once, in backward, after the upstream scale.

    Traffic per chunk: 3 matmuls of 2 C V H flops (+ the teacher's), the row kernels read the two buffers
    two or three times and write one. Upstream grad must be a scalar (reduction MEAN or SUM).

    Vocab parallel (group, vocab_start): weight is this rank's rows [vocab_start, vocab_start + V/tp) and V
    above is V/tp. Per chunk: all-reduce MAX [C, 3], all-reduce SUM [C, 5] (+ SUM [C, 2] for JSD), the same on
    every rank, so every rank must run the same chunks (same N and chunk_size). grad_weight is the local
    shard's gradient; grad_hidden = sum_c G_c W_local is this rank's partial sum of the full
    G W = sum_ranks G_r W_r: the caller's `copy_to_tensor_model_parallel_region` (applied to the hidden states
    before Megatron's output layer) all-reduces it over TP in backward.

    No teacher: CE only, loss = sum_tokens w * ce_weight * CE (the stats pass without teacher loads).
    Second output: the unweighted CE term, reduced like the loss, for logging (no gradient; 0 without CE).
    """

    @staticmethod
    def forward(ctx, hidden, weight, teacher_hidden, teacher_weight, teacher_logits, labels, weights,
                spec: LossSpec, triton_path: bool, n_valid: int, chunk_size: int, vocab_start: int = 0, group=None):
        def rows(s_c, start, end, want_grad):
            if teacher_logits is not None:
                t_c = teacher_logits[start:end]  # [c, v]
            elif teacher_hidden is not None:
                t_c = teacher_hidden[start:end] @ teacher_weight.t()  # [c, v]
            else:
                t_c = None  # CE only
            w_c = weights[start:end]
            l_c = None if labels is None else labels[start:end]
            loss_rows, saved, ce_rows = _rowwise.forward_rows(
                s_c, t_c, w_c, l_c, spec, triton_path, n_valid, vocab_start, group
            )
            ce = None if ce_rows is None else (w_c * ce_rows).sum()
            g_c = None
            if want_grad:
                g_c = _rowwise.backward_rows(s_c, t_c, l_c, saved, w_c, spec, triton_path, n_valid, vocab_start,
                                             out=s_c)
            return (w_c * loss_rows).sum(), ce, g_c

        return chunked_linear_forward(ctx, hidden, weight, chunk_size, rows)

    @staticmethod
    def backward(ctx, grad_output, _grad_ce):
        return (*chunked_linear_backward(ctx, grad_output), None, None, None, None, None, None, None, None, None, None, None)


def chunked_linear_forward(ctx, hidden, weight, chunk_size: int, rows):
    """The token-chunk loop of every fused-linear op (this one, top-k, sampled): (loss, ce) fp32 scalars.

    Per chunk of rows [start, end): s_c = hidden[start:end] W^T [c, v] (input dtype, fp32 accumulation), then
    ``rows(s_c, start, end, want_grad)`` returns the chunk's (weighted loss sum, weighted CE sum or None, and
    d loss / d s_c [c, v] or None when want_grad is False); the gradient may be written into s_c itself.
    `ChunkGrads` turns it into the chunk's grad_hidden rows (G_c W) and adds G_c^T h_c into an fp32
    grad_weight. The gradients are saved on ``ctx`` for `chunked_linear_backward`; the CE output is marked
    non-differentiable. Nothing is built when autograd will not ask (``ctx.needs_input_grad``; callers detach
    their inputs outside grad mode).
    """
    n_tokens = hidden.shape[0]
    grads = ChunkGrads(hidden, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    total = torch.zeros((), device=hidden.device, dtype=torch.float32)
    total_ce = torch.zeros((), device=hidden.device, dtype=torch.float32)
    for start in range(0, n_tokens, chunk_size):
        end = min(start + chunk_size, n_tokens)
        h_c = hidden[start:end]  # [c, h]
        s_c = h_c @ weight.t()  # [c, v]
        loss_c, ce_c, g_c = rows(s_c, start, end, grads.needed)
        total += loss_c
        if ce_c is not None:
            total_ce += ce_c
        if g_c is not None:
            grads.add_chunk(start, end, g_c, h_c, weight)
    ctx.save_for_backward(*grads.saved())
    ctx.weight_dtype = weight.dtype
    ctx.mark_non_differentiable(total_ce)
    return total, total_ce


def chunked_linear_backward(ctx, grad_output) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(grad_hidden, grad_weight) of `chunked_linear_forward`, times the upstream scalar in fp32, each in its
    parameter's dtype."""
    return scaled_grads(*ctx.saved_tensors, grad_output, ctx.weight_dtype)


def fused_linear_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
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
    group: "torch.distributed.ProcessGroup | None" = None,
    vocab_start_index: int = 0,
    return_ce: bool = False,
):
    """KD (+ CE) loss straight from the student's last hidden states [..., H] and output weight [V, H].

    The teacher is either (teacher_hidden [..., H_t], teacher_weight [V, H_t]) or teacher_logits [..., V];
    it gets no gradient. Gradients flow to student_hidden and student_weight. reduction is MEAN or SUM.
    No teacher at all: CE only, loss = ce_weight * CE (needs labels and ce_weight != 0); the no-teacher
    baseline and validation, with no [N, V] logits.
    chunk_size: tokens per chunk (default `default_chunk_size`). Other arguments as in `kd_loss`.

    Vocab parallel: group is the tensor-parallel group, student_weight (and teacher_weight /
    teacher_logits) this rank's vocab shard [V/tp, H] starting at global id vocab_start_index, labels
    global ids, vocab_size the global true vocabulary (padding at the end of the last shard is excluded).
    The loss is the full-vocabulary loss on every rank; student_weight gets its shard's gradient and
    student_hidden this rank's partial gradient, to be summed over TP (Megatron's
    `copy_to_tensor_model_parallel_region` before the output layer does it in backward).
    return_ce: also return the CE term (unweighted, reduced like the loss, no gradient); needs ce_weight != 0.
    Returns the loss, or (loss, ce) with return_ce.
    """
    reduction = Reduction(reduction)
    if reduction is Reduction.NONE:
        raise ValueError("fused_linear_kd_loss computes gradients in forward: reduction must be MEAN or SUM")
    hidden_teacher = teacher_hidden is not None or teacher_weight is not None
    half_teacher = hidden_teacher and (teacher_hidden is None or teacher_weight is None)
    if half_teacher or (teacher_logits is not None and hidden_teacher):
        raise ValueError("give either teacher_logits or both teacher_hidden and teacher_weight (or no teacher: CE only)")
    ce_only = teacher_logits is None and not hidden_teacher
    if ce_only and ce_weight == 0.0:
        raise ValueError("no teacher given: the CE-only loss (ce_weight * CE) needs ce_weight != 0")
    if ce_weight != 0.0 and labels is None:
        raise ValueError("ce_weight != 0 needs labels")
    if return_ce and ce_weight == 0.0:
        raise ValueError("return_ce needs the CE term in the loss (ce_weight != 0)")
    if ce_only:  # no divergence: kd_scale 0 and T = 1 (CE is at T = 1), so one log-sum-exp per row
        spec = make_spec(Divergence.FORWARD_KL, 0.0, 1.0, False, 0.0, ce_weight)
    else:
        spec = make_spec(divergence, beta, temperature, scale_t2, kd_weight, ce_weight)
    # no graph is built outside grad mode: then the op computes no gradient (needs_input_grad would say it must)
    student_hidden, student_weight = detach_outside_grad_mode(student_hidden, student_weight)
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])  # [n, h]
    n_tokens, vocab = hidden.shape[0], student_weight.shape[0]
    if teacher_logits is not None:
        teacher_logits = teacher_logits.detach().reshape(n_tokens, vocab).contiguous()  # [n, v]
    elif teacher_hidden is not None:
        teacher_hidden = teacher_hidden.detach().reshape(n_tokens, -1)  # [n, h_t]
        teacher_weight = teacher_weight.detach()
        if teacher_weight.shape[0] != vocab:
            raise ValueError(f"teacher vocab {teacher_weight.shape[0]} != student vocab {vocab}")
    if labels is not None:
        labels = labels.reshape(-1).to(device=hidden.device, dtype=torch.int64)
        if labels.numel() != n_tokens:
            raise ValueError(f"labels has {labels.numel()} tokens, hidden {n_tokens}")
    vocab_end = vocab_start_index + vocab if vocab_size is None else vocab_size
    n_valid = max(0, min(vocab, vocab_end - vocab_start_index))  # this shard's non-padding rows
    weights = token_weights(n_tokens, hidden.device, labels, ignore_index, loss_mask, reduction)
    chunk = default_chunk_size(n_tokens, vocab) if chunk_size is None else int(chunk_size)
    loss, ce = FusedLinearKDLossFunction.apply(
        hidden, student_weight, teacher_hidden, teacher_weight, teacher_logits, labels, weights,
        spec, use_triton(hidden, backend), n_valid, chunk, vocab_start_index, group,
    )
    return (loss, ce) if return_ce else loss
