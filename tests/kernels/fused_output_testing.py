"""Shared inputs and pure-torch references of the fused-output tests (in-process TP=1 and the TP=2 worker).

The references are written straight from the definitions on materialised full-vocabulary logits:
CE is `F.cross_entropy` over the true vocabulary; top-k KD is `reference.topk_kd_loss_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_subnet.kernels import Reduction
from nemo_subnet.kernels.reference import topk_kd_loss_reference

PAD_LOGIT_SCALE = 8.0  # padding rows of the weights are large: any padding column that leaked in would win


def ce_reference(logits, labels, *, vocab_size, ignore_index=-100, loss_mask=None, reduction=Reduction.MEAN):
    """CE at T = 1 over the first vocab_size columns, weighted like the kernels (loss_mask, ignore_index)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    s = logits.reshape(-1, logits.shape[-1])[:, :vocab_size].to(dtype)  # [n, vocab]: padding dropped
    labels = labels.reshape(-1)
    w = (labels != ignore_index).to(dtype)
    if loss_mask is not None:
        w = w * loss_mask.reshape(-1).to(dtype)
    per_token = F.cross_entropy(s, torch.where(labels == ignore_index, 0, labels), reduction="none")
    reduction = Reduction(reduction)
    if reduction is Reduction.NONE:
        return per_token * w
    total, denom = (per_token * w).sum(), w.sum()
    return total if reduction is Reduction.SUM else total / torch.where(denom > 0, denom, torch.ones_like(denom))


def topk_reference(logits, values, ids, *, ce_weight=0.0, **kwargs):
    """Top-k KD reference (+ ce_weight * CE reference) on full logits."""
    loss = topk_kd_loss_reference(logits, values, ids, **kwargs)
    if ce_weight:
        keep = {k: kwargs[k] for k in ("ignore_index", "loss_mask", "reduction") if k in kwargs}
        loss = loss + ce_weight * ce_reference(logits, kwargs["labels"], vocab_size=kwargs["vocab_size"], **keep)
    return loss


def make_inputs(n: int, h: int, v_padded: int, vocab: int, seed: int, device, dtype=torch.float32, h_t: int | None = None):
    """Student hidden [n, h] and weight [v_padded, h] (leaves), teacher hidden / weight, labels, loss_mask.

    Built on the host with a seeded generator (the same on every rank), then moved to `device`. The
    padding rows (>= vocab) are scaled by PAD_LOGIT_SCALE so that padding would dominate if not excluded.
    """
    g = torch.Generator().manual_seed(seed)
    h_t = h if h_t is None else h_t
    pad = torch.ones(v_padded, 1)
    pad[vocab:] = PAD_LOGIT_SCALE
    teacher_hidden = torch.randn(n, h_t, generator=g)
    teacher_weight = torch.randn(v_padded, h_t, generator=g) * 0.5 * pad
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v_padded, h, generator=g) * 0.4 * pad
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::5] = -100
    loss_mask = (torch.rand(n, generator=g) > 0.2).float()
    out = dict(hidden=hidden, weight=weight, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
               labels=labels, loss_mask=loss_mask)
    out = {k: t.to(device) for k, t in out.items()}
    for k in ("hidden", "weight", "teacher_hidden", "teacher_weight"):
        out[k] = out[k].to(dtype)
    out["hidden"].requires_grad_()
    out["weight"].requires_grad_()
    return out


def full_topk(teacher_logits, k: int, vocab: int):
    """Single-device teacher top-k over the true vocabulary: (values, ids) [n, k]."""
    return teacher_logits[:, :vocab].topk(k, dim=-1)
