"""Per-row building blocks of every distillation loss: Triton kernels and their pure-torch mirrors.

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
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ._common import Divergence, LossSpec, interpreter_active

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without triton: the torch mirrors still run
    triton = tl = None


def _jit(fn):
    return fn if triton is None else triton.jit(fn)

_DIV_CODE = {Divergence.FORWARD_KL: 0, Divergence.REVERSE_KL: 1, Divergence.JSD: 2}
_N_STATS = 8  # m_s, d_s, m_t, d_t, acc, m_1, d_1, s_label  (columns of the stats buffer)
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------- Triton
@_jit
def _online_lse_step(m, d, x):
    """Fold block x (masked entries -inf) into running max m and sum d = sum exp(x - m)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid entry yet: avoid -inf - -inf
    alpha = tl.exp(m - m_ref)
    e = tl.exp(x - m_ref)
    return m_new, d * alpha + tl.sum(e, axis=0), e, alpha


@_jit
def _logaddexp(a, b):
    mx = tl.maximum(a, b)
    mn = tl.minimum(a, b)
    mx_ref = tl.where(mx == float("-inf"), 0.0, mx)
    return mx + tl.log(1.0 + tl.exp(mn - mx_ref))


@_jit
def _kd_stats_kernel(
    s_ptr, s_stride, t_ptr, t_stride, w_ptr, labels_ptr, stats_ptr,
    inv_temp, n_valid, vocab_start,
    N_COLS: tl.constexpr, BLOCK_V: tl.constexpr, DIV: tl.constexpr,
    HAS_TEACHER: tl.constexpr, HAS_CE: tl.constexpr, CE_OWN_LSE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    active = tl.load(w_ptr + row) != 0.0
    n_live = tl.where(active, n_valid, 0)  # masked row: load nothing
    m_s = tl.full([], float("-inf"), tl.float32)
    d_s = tl.zeros([], tl.float32)
    m_t = tl.full([], float("-inf"), tl.float32)
    d_t = tl.zeros([], tl.float32)
    m_1 = tl.full([], float("-inf"), tl.float32)
    d_1 = tl.zeros([], tl.float32)
    acc = tl.zeros([], tl.float32)
    for start in range(0, N_COLS, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < n_live
        s = tl.load(s_row + cols, mask=valid, other=float("-inf")).to(tl.float32)
        x = s * inv_temp
        m_s, d_s, e_s, a_s = _online_lse_step(m_s, d_s, x)
        if HAS_TEACHER:
            y = tl.load(t_row + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
            m_t, d_t, e_t, a_t = _online_lse_step(m_t, d_t, y)
            if DIV == 0:  # sum exp(y - m_t) (y - x): forward KL numerator, rescaled with m_t
                acc = acc * a_t + tl.sum(tl.where(e_t > 0, e_t * (y - x), 0.0), axis=0)
            elif DIV == 1:  # sum exp(x - m_s) (x - y): reverse KL numerator
                acc = acc * a_s + tl.sum(tl.where(e_s > 0, e_s * (x - y), 0.0), axis=0)
        if CE_OWN_LSE:
            m_1, d_1, e_1, a_1 = _online_lse_step(m_1, d_1, s)
    if not CE_OWN_LSE:
        m_1 = m_s
        d_1 = d_s
    out = stats_ptr + row * 8
    tl.store(out + 0, tl.where(active, m_s, 0.0))
    tl.store(out + 1, tl.where(active, d_s, 1.0))
    tl.store(out + 2, tl.where(active, m_t, 0.0))
    tl.store(out + 3, tl.where(active, d_t, 1.0))
    tl.store(out + 4, tl.where(active, acc, 0.0))
    tl.store(out + 5, tl.where(active, m_1, 0.0))
    tl.store(out + 6, tl.where(active, d_1, 1.0))
    s_label = tl.zeros([], tl.float32)
    if HAS_CE:
        label = tl.load(labels_ptr + row) - vocab_start
        owned = (label >= 0) & (label < n_live)
        s_label = tl.load(s_row + label, mask=owned, other=0.0).to(tl.float32)
    tl.store(out + 7, s_label)


@_jit
def _kd_jsd_kernel(
    s_ptr, s_stride, t_ptr, t_stride, w_ptr, lse_ptr, out_ptr,
    inv_temp, beta, log_beta, log_1m_beta, n_valid,
    N_COLS: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    n_live = tl.where(tl.load(w_ptr + row) != 0.0, n_valid, 0)
    lse_s = tl.load(lse_ptr + row * 2)
    lse_t = tl.load(lse_ptr + row * 2 + 1)
    loss = tl.zeros([BLOCK_V], tl.float32)
    g_sum = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, N_COLS, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < n_live
        lq = tl.load(s_row + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp - lse_s
        lp = tl.load(t_row + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp - lse_t
        q = tl.exp(lq)
        p = tl.exp(lp)
        lm = _logaddexp(log_beta + lp, log_1m_beta + lq)  # log M, never log(0) even when p, q underflow
        r = tl.exp(_logaddexp(log_1m_beta + lp, log_beta + lq) - lm)
        kl_p = tl.where(p > 0, p * (lp - lm), 0.0)
        kl_q = tl.where(q > 0, q * (lq - lm), 0.0)
        loss += tl.where(valid, (1.0 - beta) * kl_p + beta * kl_q, 0.0)
        g_sum += tl.where(valid & (q > 0), q * (beta * (lq - lm) - (1.0 - beta) * r), 0.0)
    tl.store(out_ptr + row * 2, tl.sum(loss, axis=0))
    tl.store(out_ptr + row * 2 + 1, tl.sum(g_sum, axis=0))


@_jit
def _kd_grad_kernel(
    s_ptr, s_stride, t_ptr, t_stride, g_ptr, g_stride, rows_ptr, labels_ptr,
    inv_temp, beta, log_beta, log_1m_beta, n_valid, vocab_start,
    N_COLS: tl.constexpr, BLOCK_V: tl.constexpr, DIV: tl.constexpr,
    HAS_TEACHER: tl.constexpr, HAS_CE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    g_row = g_ptr + row * g_stride
    rows = rows_ptr + row * 6  # lse_s, lse_t, lse_1, aux, c_kd, c_ce
    lse_s = tl.load(rows + 0)
    lse_t = tl.load(rows + 1)
    lse_1 = tl.load(rows + 2)
    aux = tl.load(rows + 3)
    c_kd = tl.load(rows + 4)
    c_ce = tl.load(rows + 5)
    n_live = tl.where((c_kd != 0.0) | (c_ce != 0.0), n_valid, 0)
    label = -1
    if HAS_CE:
        label = tl.load(labels_ptr + row) - vocab_start
    for start in range(0, N_COLS, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < n_live
        s = tl.load(s_row + cols, mask=valid, other=0.0).to(tl.float32)
        lq = s * inv_temp - lse_s
        q = tl.exp(lq)
        lp = lq
        if HAS_TEACHER:
            lp = tl.load(t_row + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp - lse_t
        if DIV == 0:
            dz = q
            if HAS_TEACHER:
                dz = q - tl.exp(lp)
        elif DIV == 1:
            dz = tl.where(q > 0, q * (lq - lp - aux), 0.0)
        else:
            lm = _logaddexp(log_beta + lp, log_1m_beta + lq)
            r = tl.exp(_logaddexp(log_1m_beta + lp, log_beta + lq) - lm)
            dz = tl.where(q > 0, q * (beta * (lq - lm) - (1.0 - beta) * r - aux), 0.0)
        g = c_kd * dz
        if HAS_CE:
            g += c_ce * (tl.exp(s - lse_1) - tl.where(cols == label, 1.0, 0.0))
        g = tl.where(valid, g, 0.0)
        tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=cols < N_COLS)


def _launch_config(n_cols: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps). The interpreter gets small blocks so tests walk several loop iterations."""
    if interpreter_active():
        return min(128, triton.next_power_of_2(n_cols)), 1
    block = min(4096, max(128, triton.next_power_of_2(n_cols)))
    return block, (8 if block >= 2048 else 4)


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
    n_rows, n_cols = s.shape
    stats = torch.empty(n_rows, _N_STATS, device=s.device, dtype=torch.float32)
    block, warps = _launch_config(n_cols)
    t_arg = s if t is None else t
    _kd_stats_kernel[(n_rows,)](
        s, s.stride(0), t_arg, t_arg.stride(0), w, labels if spec.has_ce else w, stats,
        spec.inv_temp, n_valid, vocab_start,
        N_COLS=n_cols, BLOCK_V=block, DIV=_DIV_CODE[spec.divergence], HAS_TEACHER=t is not None,
        HAS_CE=spec.has_ce, CE_OWN_LSE=spec.has_ce and spec.temperature != 1.0, num_warps=warps,
    )
    return stats


def row_jsd(s, t, w, lse, spec: LossSpec, triton_path: bool, n_valid: int) -> torch.Tensor:
    """JSD pass → [n, 2] fp32: the row's (partial) JSD and the partial sum G of its gradient."""
    if not triton_path:
        return _jsd_torch(s, t, w, lse, spec, n_valid)
    n_rows, n_cols = s.shape
    out = torch.empty(n_rows, 2, device=s.device, dtype=torch.float32)
    block, warps = _launch_config(n_cols)
    _kd_jsd_kernel[(n_rows,)](
        s, s.stride(0), t, t.stride(0), w, lse.contiguous(), out,
        spec.inv_temp, spec.beta, spec.log_beta, spec.log_1m_beta, n_valid,
        N_COLS=n_cols, BLOCK_V=block, num_warps=warps,
    )
    return out


def row_grad(s, t, labels, rows, spec: LossSpec, triton_path: bool, n_valid: int, vocab_start: int = 0, out=None):
    """Grad pass: d loss / d s as `out` (default a new tensor like s; may be s itself, in place).

    rows [n, 6] fp32 = (lse_s, lse_t, lse_1, aux, c_kd, c_ce): final row statistics and the per-row
    coefficients of the KD and CE gradients (upstream grad, token weight and scales folded in).
    """
    out = torch.empty_like(s) if out is None else out
    if not triton_path:
        return _grad_torch(s, t, labels, rows, spec, n_valid, vocab_start, out)
    n_rows, n_cols = s.shape
    block, warps = _launch_config(n_cols)
    t_arg = s if t is None else t
    _kd_grad_kernel[(n_rows,)](
        s, s.stride(0), t_arg, t_arg.stride(0), out, out.stride(0), rows.contiguous(),
        labels if spec.has_ce else rows,
        spec.inv_temp, spec.beta, spec.log_beta, spec.log_1m_beta, n_valid, vocab_start,
        N_COLS=n_cols, BLOCK_V=block, DIV=_DIV_CODE[spec.divergence], HAS_TEACHER=t is not None,
        HAS_CE=spec.has_ce, num_warps=warps,
    )
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
    per-row CE [n] or None without CE).

    The per-row loss is kd_scale * D + ce_weight * CE, before the token weight.
    """
    stats = row_stats(s, t, w, labels, spec, triton_path, n_valid, vocab_start)
    lse_s, lse_t, lse_1, kd, ce = combine_stats(stats, spec, group)
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
