"""Per-row building blocks of every distillation loss: pure-torch mirrors of the Triton kernels, the
launchers that pick between them, and the host-side combination of row statistics.

A row is one token's logits over (a shard of) the vocabulary. Each loss is assembled from three row
passes, whatever the op (logits given, fused linear, vocab-parallel, top-k):

1. stats   (reads s, t once)  per row: running max and sum-exp of x = s/T, y = t/T (and of s for CE at
           T != 1), the KL numerator for forward / reverse KL accumulated online, and s[label].
2. jsd     (JSD only; reads s, t once)  with the final log-sum-exps: the row's JSD and the constant G its
           gradient needs.
3. grad    (reads s, t, writes g once; g may alias s)  d loss / d s from the final row statistics.

Between 1 and 2 the row statistics are combined in `combine_stats`; under vocab parallelism that is where
the all-reduces go (max, then one sum of everything), so a sharded row gives exactly the full-vocab value.
The maths of each divergence and of its gradient is in `kd_loss.LogitKDLossFunction`'s docstring.

Columns at global index >= vocab_size (Megatron's vocabulary padding) are -inf: no mass, zero gradient.
Rows whose weight is 0 (masked tokens) load nothing and get benign statistics (lse 0, loss 0).
The Triton kernels and their launch plan (block sizes, warps, constexprs) are in `_row_kernels.py`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ._common import Divergence, LossSpec
from ._row_kernels import N_STATS as _N_STATS
from ._row_kernels import grad_launch, jsd_launch, stats_launch

_NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------ torch mirrors
def _acc(x: torch.Tensor) -> torch.Tensor:
    """Accumulation dtype of the mirrors: fp32, or float64 for float64 inputs (gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _max_and_sum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max, sum exp(x - max), lse) over the last dim, from torch's fused logsumexp."""
    m = x.amax(dim=-1)
    lse = torch.logsumexp(x, dim=-1)
    m_ref = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
    return m, torch.exp(lse - m_ref), lse


def _logaddexp_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mx, mn = torch.maximum(a, b), torch.minimum(a, b)
    mx_ref = torch.where(mx == _NEG_INF, torch.zeros_like(mx), mx)
    return mx + torch.log1p(torch.exp(mn - mx_ref))


def _weighted_sum(weight: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """sum_v weight * value per row, with 0 where weight == 0 (0 * inf is 0 here, not nan)."""
    if not torch.isfinite(value).all():
        value = value.masked_fill(weight == 0, 0.0)
    return torch.linalg.vecdot(weight, value)


def _stats_torch(s, t, w, labels, spec: LossSpec, n_valid: int, vocab_start: int) -> torch.Tensor:
    n_rows, dtype = s.shape[0], torch.promote_types(s.dtype, torch.float32)
    active = w != 0
    if n_valid == 0:  # a shard made only of padding: no mass here
        out = torch.zeros(n_rows, _N_STATS, dtype=dtype, device=s.device)
        out[:, [0, 2, 5]] = _NEG_INF
        return torch.where(active[:, None], out, _BENIGN.to(out))
    x = _acc(s[:, :n_valid]) * spec.inv_temp  # [n, nv]; masked rows are computed and then overwritten
    m_s, d_s, lse_s = _max_and_sum(x)
    zeros = torch.zeros_like(m_s)
    m_t, d_t, acc, m_1, d_1, s_label = zeros, zeros, zeros, m_s, d_s, zeros
    if t is not None:
        y = _acc(t[:, :n_valid]) * spec.inv_temp
        m_t, d_t, lse_t = _max_and_sum(y)
        if spec.divergence is Divergence.FORWARD_KL:  # d_t * sum_v P (y - x)
            acc = d_t * _weighted_sum(torch.exp(y - lse_t[:, None]), y - x)
        elif spec.divergence is Divergence.REVERSE_KL:  # d_s * sum_v Q (x - y)
            acc = d_s * _weighted_sum(torch.exp(x - lse_s[:, None]), x - y)
    if spec.has_ce and spec.temperature != 1.0:
        m_1, d_1, _ = _max_and_sum(_acc(s[:, :n_valid]))
    if spec.has_ce:
        label = labels.reshape(-1) - vocab_start
        owned = active & (label >= 0) & (label < n_valid)
        picked = _acc(s).gather(1, torch.where(owned, label, 0)[:, None])[:, 0]
        s_label = torch.where(owned, picked, 0.0)
    stats = torch.stack([m_s, d_s, m_t, d_t, acc, m_1, d_1, s_label], dim=1)  # [n, 8]
    return torch.where(active[:, None], stats, _BENIGN.to(stats))


_BENIGN = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # stats of a masked row: lse 0, loss 0


def _jsd_terms(lq, lp, spec: LossSpec):
    lm = _logaddexp_torch(spec.log_beta + lp, spec.log_1m_beta + lq)
    r = torch.exp(_logaddexp_torch(spec.log_1m_beta + lp, spec.log_beta + lq) - lm)
    return lm, r


def _jsd_torch(s, t, w, lse, spec: LossSpec, n_valid: int) -> torch.Tensor:
    lq = _acc(s[:, :n_valid]) * spec.inv_temp - lse[:, :1]  # [n, nv]
    lp = _acc(t[:, :n_valid]) * spec.inv_temp - lse[:, 1:]
    q, p = torch.exp(lq), torch.exp(lp)
    lm, r = _jsd_terms(lq, lp, spec)
    beta = spec.beta
    loss = (1 - beta) * _weighted_sum(p, lp - lm) + beta * _weighted_sum(q, lq - lm)
    g_sum = _weighted_sum(q, beta * (lq - lm) - (1 - beta) * r)
    out = torch.stack([loss, g_sum], dim=1)
    return torch.where((w != 0)[:, None], out, 0.0)


def _grad_torch(s, t, labels, rows, spec: LossSpec, n_valid: int, vocab_start: int, out: torch.Tensor) -> torch.Tensor:
    lse_s, lse_t, lse_1, aux, c_kd, c_ce = (rows[:, i : i + 1] for i in range(6))
    out[:, n_valid:] = 0
    if n_valid == 0:
        return out
    s_v = _acc(s[:, :n_valid])  # [n, nv]
    lq = s_v * spec.inv_temp - lse_s
    q = torch.exp(lq)
    lp = _acc(t[:, :n_valid]) * spec.inv_temp - lse_t if t is not None else None
    if spec.divergence is Divergence.FORWARD_KL:
        g = q.sub_(torch.exp(lp)) if t is not None else q
    elif spec.divergence is Divergence.REVERSE_KL:
        g = torch.where(q > 0, q * (lq - lp - aux), 0.0)
    else:
        lm, r = _jsd_terms(lq, lp, spec)
        g = torch.where(q > 0, q * (spec.beta * (lq - lm) - (1 - spec.beta) * r - aux), 0.0)
    g = g.mul_(c_kd)
    if spec.has_ce:
        g.add_(torch.exp(s_v - lse_1).mul_(c_ce))
        label = labels.reshape(-1) - vocab_start
        rows_ce = ((label >= 0) & (label < n_valid) & (c_ce[:, 0] != 0)).nonzero()[:, 0]
        g[rows_ce, label[rows_ce]] -= c_ce[rows_ce, 0]
    inactive = ((c_kd[:, 0] == 0) & (c_ce[:, 0] == 0)).nonzero()[:, 0]
    g.index_fill_(0, inactive, 0.0)  # masked rows: exactly 0, whatever their logits
    out[:, :n_valid] = g
    return out


# ---------------------------------------------------------------------------------------- launchers
def row_stats(s, t, w, labels, spec: LossSpec, triton_path: bool, n_valid: int, vocab_start: int = 0):
    """Stats pass → [n, 8] fp32 (see module docstring). t may be None (top-k: student only)."""
    if not triton_path:
        return _stats_torch(s, t, w, labels, spec, n_valid, vocab_start)
    stats = torch.empty(s.shape[0], _N_STATS, device=s.device, dtype=torch.float32)
    stats_launch(s, t, w, labels, spec, n_valid, vocab_start, stats).run()
    return stats


def row_jsd(s, t, w, lse, spec: LossSpec, triton_path: bool, n_valid: int) -> torch.Tensor:
    """JSD pass → [n, 2] fp32: the row's (partial) JSD and the partial sum G of its gradient."""
    if not triton_path:
        return _jsd_torch(s, t, w, lse, spec, n_valid)
    out = torch.empty(s.shape[0], 2, device=s.device, dtype=torch.float32)
    jsd_launch(s, t, w, lse, spec, n_valid, out).run()
    return out


def row_grad(s, t, labels, rows, spec: LossSpec, triton_path: bool, n_valid: int, vocab_start: int = 0, out=None):
    """Grad pass: d loss / d s as `out` (default a new tensor like s; may be s itself, in place).

    rows [n, 6] fp32 = (lse_s, lse_t, lse_1, aux, c_kd, c_ce): final row statistics and the per-row
    coefficients of the KD and CE gradients (upstream grad, token weight and scales folded in).
    """
    out = torch.empty_like(s) if out is None else out
    if not triton_path:
        return _grad_torch(s, t, labels, rows, spec, n_valid, vocab_start, out)
    grad_launch(s, t, labels, rows, spec, n_valid, vocab_start, out).run()
    return out


# -------------------------------------------------------------------------------------- combination
def combine_stats(stats: torch.Tensor, spec: LossSpec, group=None):
    """Row statistics (local, or per vocab shard) → (lse_s, lse_t, lse_1, kd_numerator, ce) [n] each.

    With a process group the shards are merged with two all-reduces: MAX of the running maxima, then SUM
    of the sum-exps rescaled to the global maxima (with the KL numerators and s[label] in the same call).
    For FORWARD/REVERSE_KL the returned KD term is the final per-row KL; for JSD it is 0 (needs `row_jsd`).
    """
    # column picks by stack, not a Python-list index (which builds a host index tensor and copies it per call)
    local_max = torch.stack([stats[:, 0], stats[:, 2], stats[:, 5]], dim=1)  # [n, 3]: student, teacher, T=1
    m = local_max
    if group is not None:
        m = m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m_ref = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
    scale = torch.exp(local_max - m_ref)  # local max -> global max
    acc_scale = scale[:, 1] if spec.divergence is Divergence.FORWARD_KL else scale[:, 0]
    sums = torch.stack(
        [stats[:, 1] * scale[:, 0], stats[:, 3] * scale[:, 1], stats[:, 6] * scale[:, 2],
         stats[:, 4] * acc_scale, stats[:, 7]], dim=1,
    )  # [n, 5]
    if group is not None:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    lse = m_ref + torch.log(sums[:, :3])
    lse_s, lse_t, lse_1 = lse.unbind(1)
    if spec.divergence is Divergence.FORWARD_KL:
        kd = sums[:, 3] / sums[:, 1] - lse_t + lse_s
    elif spec.divergence is Divergence.REVERSE_KL:
        kd = sums[:, 3] / sums[:, 0] - lse_s + lse_t
    else:
        kd = torch.zeros_like(lse_s)
    ce = lse_1 - sums[:, 4]
    return lse_s, lse_t, lse_1, kd, ce


def forward_rows(s, t, w, labels, spec: LossSpec, triton_path: bool, n_valid: int, vocab_start: int = 0, group=None):
    """All forward passes for one block of rows → (per-row loss [n], saved [n, 4] for `backward_rows`,
    per-row CE [n] or None without CE). t None: CE only (a FORWARD_KL spec with kd_scale 0 and CE on).

    The per-row loss is kd_scale * D + ce_weight * CE, before the token weight.
    """
    stats = row_stats(s, t, w, labels, spec, triton_path, n_valid, vocab_start)
    lse_s, lse_t, lse_1, kd, ce = combine_stats(stats, spec, group)
    if t is None:  # CE only (no teacher, kd_scale 0): combine_stats' KD term is 0/0 there, not a divergence
        kd = torch.zeros_like(kd)
    aux = kd  # reverse KL: its gradient needs the row's KL
    if spec.divergence is Divergence.JSD:
        part = row_jsd(s, t, w, torch.stack([lse_s, lse_t], 1), spec, triton_path, n_valid)
        if group is not None:
            dist.all_reduce(part, op=dist.ReduceOp.SUM, group=group)
        kd, aux = part[:, 0], part[:, 1]
    loss = spec.kd_scale * kd
    if spec.has_ce:
        loss = loss + spec.ce_weight * ce
    active = w != 0
    loss = torch.where(active, loss, 0.0)
    ce_rows = torch.where(active, ce, 0.0) if spec.has_ce else None
    return loss, torch.stack([lse_s, lse_t, lse_1, torch.where(active, aux, 0.0)], dim=1), ce_rows


def backward_rows(s, t, labels, saved, coef, spec: LossSpec, triton_path: bool, n_valid: int, vocab_start: int = 0, out=None):
    """Gradient w.r.t. s of sum_rows coef_row * loss_row (coef = upstream grad * token weight)."""
    coef = coef.to(saved.dtype)
    c_kd = coef * (spec.kd_scale * spec.inv_temp)
    c_ce = coef * spec.ce_weight
    rows = torch.cat([saved, c_kd[:, None], c_ce[:, None]], dim=1)
    return row_grad(s, t, labels, rows, spec, triton_path, n_valid, vocab_start, out=out)
