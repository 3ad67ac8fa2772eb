"""Distillation loss on vocabulary-sharded logits (Megatron's vocab-parallel output layer).

Each tensor-parallel rank holds columns [vocab_start_index, vocab_start_index + V_local) of the student and
teacher logits (the same partition for both, as Megatron's ColumnParallelLinear output layer gives).
The row kernels of `_rowwise.py` run on the local shard and `combine_stats` merges the per-row
statistics across the group:

    all-reduce MAX   running maxima of s/T, t/T (and s for CE)               [N, 3]
    all-reduce SUM   sum-exps rescaled to the global maxima, the online KL    [N, 5]
                     numerator, s[label] (non-zero on the owning rank only)
    all-reduce SUM   JSD only: the row's partial JSD and gradient constant G  [N, 2]

after which every rank holds the exact full-vocabulary log-sum-exps and loss (identical on all ranks), and
backward needs no communication: each rank writes the gradient of its own shard. Padding columns (global
index >= vocab_size; they sit at the end of the last shard) are excluded on the rank that holds them.
"""

from __future__ import annotations

import torch

from ._common import Backend, Divergence, Reduction
from .kd_loss import logit_kd_loss


def vocab_parallel_kd_loss(
    student_shard: torch.Tensor,
    teacher_shard: torch.Tensor,
    *,
    group: "torch.distributed.ProcessGroup",
    vocab_start_index: int,
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
    """`kd_loss` for logits [..., V_local] sharded over `group`; equals the full-vocabulary loss.

    Args:
        group: the tensor-parallel process group (e.g. `parallel_state.get_tensor_model_parallel_group()`).
        vocab_start_index: global id of this rank's first column (rank * V_local in Megatron).
        labels: global token ids (replicated on every rank); CE (ce_weight != 0) is vocab-parallel too.
        vocab_size: true global vocabulary size; None means no padding.
        Other arguments as in `kd_loss`. The returned loss is the same on every rank.
    """
    return logit_kd_loss(
        student_shard, teacher_shard, divergence=divergence, beta=beta, temperature=temperature,
        scale_t2=scale_t2, labels=labels, ignore_index=ignore_index, loss_mask=loss_mask,
        reduction=reduction, vocab_size=vocab_size, kd_weight=kd_weight, ce_weight=ce_weight,
        backend=backend, group=group, vocab_start_index=vocab_start_index, return_ce=return_ce,
    )
