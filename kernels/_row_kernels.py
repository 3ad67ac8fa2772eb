"""Triton kernels of the per-row passes (stats, jsd, grad), and their launch plan.

The maths and the order of the passes are described in `_rowwise.py`, which holds the torch mirrors and the
host-side combination. This file holds what runs on the GPU and *how it is launched*: `launch_config`
chooses BLOCK_V / num_warps from the row length, and `stats_launch` / `jsd_launch` / `grad_launch` build the
complete launch (kernel, grid, arguments, constexprs, num_warps) from the tensors and the `LossSpec`. The
launchers in `_rowwise.py` run those launches; `recording()` collects them instead, which is how the AOT
compile check (tests/kernels/test_aot_compile.py, benchmarks/triton_compile.py) compiles for sm_90 / sm_100
exactly the variants the ops launch, by running the ops on meta tensors.

Offsets: a row's base is `row * stride` with `row` cast to int64 first, so N * V beyond 2^31 elements is
safe (strides arrive as i32 when they fit; i32 * i32 would wrap). Column offsets within a row stay i32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ._common import Divergence, LossSpec, interpreter_active

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without triton: the torch mirrors still run
    triton = tl = None


def _jit(fn):
    return fn if triton is None else triton.jit(fn)

DIV_CODE = {Divergence.FORWARD_KL: 0, Divergence.REVERSE_KL: 1, Divergence.JSD: 2}
N_STATS = 8  # m_s, d_s, m_t, d_t, acc, m_1, d_1, s_label  (columns of the stats buffer)


# ---------------------------------------------------------------------------------------------- kernels
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



# ------------------------------------------------------------------------------------------ launch plan
@dataclass(frozen=True)
class LaunchConfig:
    block_v: int  # columns per loop iteration (a power of two)
    num_warps: int


def launch_config(n_cols: int, interpreted: bool) -> LaunchConfig:
    """BLOCK_V and num_warps for rows of n_cols. The interpreter gets small blocks so tests walk several
    loop iterations; on the GPU 4096-column blocks (8 warps) for vocabulary-sized rows."""
    if interpreted:
        return LaunchConfig(min(128, triton.next_power_of_2(n_cols)), 1)
    block = min(4096, max(128, triton.next_power_of_2(n_cols)))
    return LaunchConfig(block, 8 if block >= 2048 else 4)


@dataclass(frozen=True)
class KernelLaunch:
    """One Triton launch, complete: `run()` does `kernel[grid](*args, **constexprs, num_warps=...)`."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4

    @property
    def name(self) -> str:
        return self.kernel.__name__ if hasattr(self.kernel, "__name__") else self.kernel.fn.__name__

    def run(self) -> None:
        if _recorded is not None:
            _recorded.append(self)
            return
        if any(isinstance(a, torch.Tensor) and a.is_meta for a in self.args):
            raise RuntimeError(f"{self.name}: meta tensors have no data; launches on them can only be recorded "
                               "(inside kernels._row_kernels.recording())")
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps)


_recorded: list[KernelLaunch] | None = None


@contextlib.contextmanager
def recording():
    """Collect the launches the ops make instead of running them (yields the list). Use meta tensors and
    Backend.TRITON: shapes, dtypes and strides are all a launch needs. GPU launch configs only, so the
    interpreter must be off in this process."""
    global _recorded
    if triton is None:
        raise RuntimeError("triton is not installed: nothing to record")
    if interpreter_active():
        raise RuntimeError("recording() plans GPU launches: run it in a process without TRITON_INTERPRET=1")
    if _recorded is not None:
        raise RuntimeError("recording() does not nest")
    _recorded = []
    try:
        yield _recorded
    finally:
        _recorded = None


def stats_launch(s, t, w, labels, spec: LossSpec, n_valid: int, vocab_start: int, out) -> KernelLaunch:
    """Stats pass into out [n, N_STATS] fp32. t None: student only (top-k teacher)."""
    n_rows, n_cols = s.shape
    cfg = launch_config(n_cols, interpreter_active())
    t_arg = s if t is None else t
    return KernelLaunch(
        _kd_stats_kernel, (n_rows,),
        (s, s.stride(0), t_arg, t_arg.stride(0), w, labels if spec.has_ce else w, out,
         spec.inv_temp, n_valid, vocab_start),
        dict(N_COLS=n_cols, BLOCK_V=cfg.block_v, DIV=DIV_CODE[spec.divergence], HAS_TEACHER=t is not None,
             HAS_CE=spec.has_ce, CE_OWN_LSE=spec.has_ce and spec.temperature != 1.0),
        cfg.num_warps,
    )


def jsd_launch(s, t, w, lse, spec: LossSpec, n_valid: int, out) -> KernelLaunch:
    """JSD pass into out [n, 2] fp32, from lse [n, 2] = (lse_s, lse_t)."""
    n_rows, n_cols = s.shape
    cfg = launch_config(n_cols, interpreter_active())
    return KernelLaunch(
        _kd_jsd_kernel, (n_rows,),
        (s, s.stride(0), t, t.stride(0), w, lse.contiguous(), out,
         spec.inv_temp, spec.beta, spec.log_beta, spec.log_1m_beta, n_valid),
        dict(N_COLS=n_cols, BLOCK_V=cfg.block_v),
        cfg.num_warps,
    )


def grad_launch(s, t, labels, rows, spec: LossSpec, n_valid: int, vocab_start: int, out) -> KernelLaunch:
    """Grad pass into out (like s; may be s), from rows [n, 6] fp32 (see `_rowwise.row_grad`)."""
    n_rows, n_cols = s.shape
    cfg = launch_config(n_cols, interpreter_active())
    t_arg = s if t is None else t
    return KernelLaunch(
        _kd_grad_kernel, (n_rows,),
        (s, s.stride(0), t_arg, t_arg.stride(0), out, out.stride(0), rows.contiguous(),
         labels if spec.has_ce else rows,
         spec.inv_temp, spec.beta, spec.log_beta, spec.log_1m_beta, n_valid, vocab_start),
        dict(N_COLS=n_cols, BLOCK_V=cfg.block_v, DIV=DIV_CODE[spec.divergence], HAS_TEACHER=t is not None,
             HAS_CE=spec.has_ce),
        cfg.num_warps,
    )
