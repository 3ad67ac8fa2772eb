"""Per-block passes of the sparse-teacher distillation losses on a vocabulary shard (shared by the top-k logits
op, the fused-linear top-k op and the fused-linear sampled op, which differ only in the [n, k] divergence).

The teacher is (values, global ids) [n, k]; the student block s [n, V_local] holds global columns
[vocab_start, vocab_start + V_local). Forward, per block of rows:

    stats pass (student only, `_rowwise.row_stats`)      running max / sum-exp of s/T (+ s at T=1 and s[label]
                                                         for CE), merged over the group by `combine_stats`
    all-reduce SUM of x[ids] [n, k]                      each rank contributes the ids it owns, 0 elsewhere
    divergence on [n, k] (`topk_kd_loss._topk_divergence`) and its gradients a = dD/dlse, b = dD/dx[ids] by
    autograd on those small tensors (identical on every rank)

Backward writes d loss / d s of the local shard with no communication: the dense part a Q (+ the CE
gradient) by the row-grad kernel, then b scatter-added at the ids this rank owns.
With group None and no CE these are exactly the passes of `topk_kd_loss` (same values, same bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import _rowwise
from ._common import Divergence, LossSpec
from .topk_kd_loss import _topk_divergence


@dataclass
class TopKSaved:
    """What the backward of one block needs (all [n] or [n, k], fp32)."""

    lse_s: torch.Tensor  # [n] lse of s/T over the full vocabulary
    lse_1: torch.Tensor  # [n] lse of s (CE), = lse_s at T = 1
    local_ids: torch.Tensor  # [n, k] column in this shard, 0 where not owned
    owned: torch.Tensor  # [n, k] bool: this shard holds the id
    d_x: torch.Tensor  # [n, k] d (sum_rows w * loss) / d x[ids], x = s / T
    d_lse: torch.Tensor  # [n] d (sum_rows w * loss) / d lse_s


def topk_forward_rows(s, values, ids, w, labels, spec: LossSpec, triton_path: bool, n_valid: int,
                      vocab_start: int = 0, group=None, divergence=None):
    """→ (per-row loss [n] before the token weight, per-row CE [n] or None, TopKSaved).

    divergence: per-row D [n] of (x = s/T at the ids [n, k], lse of x [n]), differentiable in both; default the
    top-k divergence against softmax(values / T) (another sparse teacher passes its own, values None)."""
    stats = _rowwise.row_stats(s, None, w, labels, spec, triton_path, n_valid, vocab_start)
    lse_s, _, lse_1, _, ce = _rowwise.combine_stats(stats, spec, group)  # its KD term is unused here
    local = ids - vocab_start  # [n, k]
    owned = (local >= 0) & (local < n_valid)
    local = torch.where(owned, local, 0)
    x_k = torch.where(owned, s.detach().gather(1, local).float(), 0.0)  # [n, k]
    if group is not None:
        dist.all_reduce(x_k, op=dist.ReduceOp.SUM, group=group)  # every id is owned by exactly one rank
    with torch.enable_grad():
        x_leaf = (x_k * spec.inv_temp).requires_grad_()
        lse_leaf = lse_s.detach().requires_grad_()
        if divergence is None:
            per_row = spec.kd_scale * _topk_divergence(x_leaf, lse_leaf, values, spec)
        else:
            per_row = spec.kd_scale * divergence(x_leaf, lse_leaf)
        d_x, d_lse = torch.autograd.grad((w * per_row).sum(), (x_leaf, lse_leaf))
    loss = per_row.detach()
    active = w != 0
    ce_rows = None
    if spec.has_ce:
        ce_rows = torch.where(active, ce, 0.0)
        loss = loss + spec.ce_weight * ce_rows
    return loss, ce_rows, TopKSaved(lse_s, lse_1, local, owned, d_x, d_lse)


def topk_backward_rows(s, labels, saved: TopKSaved, grad_output, w, spec: LossSpec, triton_path: bool,
                       n_valid: int, vocab_start: int = 0, out=None):
    """d (sum_rows go * w * loss) / d s for the local shard (`out` may be s itself: written in place).

    grad_output: the upstream grad, a scalar or per row [n].
    """
    go = grad_output.to(torch.float32)
    go_row = go[:, None] if go.dim() == 1 else go
    zeros = torch.zeros_like(saved.lse_s)
    c_ce = go * w * spec.ce_weight if spec.has_ce else zeros
    rows = torch.stack([saved.lse_s, zeros, saved.lse_1, zeros, go * saved.d_lse * spec.inv_temp, c_ce], dim=1)
    # the dense part: forward-KL variant without teacher writes c_kd * Q (+ c_ce * (softmax(s) - onehot))
    dense_spec = LossSpec(Divergence.FORWARD_KL, 0.0, spec.temperature, 1.0, spec.ce_weight)
    grad = _rowwise.row_grad(s, None, labels, rows, dense_spec, triton_path, n_valid, vocab_start, out=out)
    sparse = torch.where(saved.owned, go_row * saved.d_x * spec.inv_temp, 0.0)  # [n, k]
    return grad.scatter_add_(1, saved.local_ids, sparse.to(grad.dtype))
