"""Typed options shared by every distillation-loss op, and the Triton-or-torch dispatch.

Every op has two implementations of the same maths: Triton kernels (CUDA tensors, or CPU tensors under
Triton's interpreter) and a pure-torch mirror of each kernel (the CPU runtime path). `Backend.AUTO`
picks Triton for CUDA tensors and torch otherwise.
"""

from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass

import torch


class Divergence(str, enum.Enum):
    """Which divergence between teacher distribution P and student distribution Q.

    FORWARD_KL  KL(P||Q) = sum_v P_v (log P_v - log Q_v)       mass-covering (Hinton KD).
    REVERSE_KL  KL(Q||P) = sum_v Q_v (log Q_v - log P_v)       mode-seeking.
    JSD         generalized Jensen-Shannon with skew beta in [0, 1]:
                    M = beta * P + (1 - beta) * Q
                    JSD_beta = (1 - beta) * KL(P||M) + beta * KL(Q||M)
                beta = 0 gives M = Q and JSD = KL(P||Q) (forward KL); beta = 1 gives M = P and
                JSD = KL(Q||P) (reverse KL); beta = 1/2 is the symmetric JSD. The value is continuous in
                beta on the closed interval, so the endpoints are the KLs themselves, not special cases.
                (TRL / Liger-Kernel weight KL(P||M) by beta instead, so their interior formula tends to 0
                at both ends and they switch to the KLs at exactly 0 and 1; ours does not jump.)
    """

    FORWARD_KL = "forward_kl"
    REVERSE_KL = "reverse_kl"
    JSD = "jsd"


class Reduction(str, enum.Enum):
    """How per-token losses are reduced. MEAN divides by the (weighted) number of valid tokens and is 0,
    not NaN, when no token is valid; NONE returns per-token losses (0 at masked tokens)."""

    MEAN = "mean"
    SUM = "sum"
    NONE = "none"


class Backend(str, enum.Enum):
    """AUTO: Triton for CUDA tensors, torch otherwise. TRITON on CPU tensors needs Triton's interpreter
    (TRITON_INTERPRET=1 set before `triton` is first imported); on meta tensors it plans the launches
    (see `_row_kernels.recording`). TORCH: the pure-torch mirror."""

    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


def interpreter_active() -> bool:
    """True when Triton kernels in this process run in the CPU interpreter."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    try:  # triton fixes interpret mode for its own library functions when it is first imported
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(tl.standard.zeros, InterpretedFunction)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: torch.Tensor, backend: Backend) -> bool:
    """Resolve `backend` for `tensor`; raise if TRITON is asked for where it cannot run."""
    backend = Backend(backend)
    if backend is Backend.TORCH:
        return False
    if not triton_available():
        if backend is Backend.TRITON or tensor.is_cuda:
            raise RuntimeError("triton is not installed: use Backend.TORCH (pip install nemo-subnet[triton])")
        return False
    if backend is Backend.AUTO:
        return tensor.is_cuda
    if tensor.is_meta:  # shapes only: the launches are recorded, not run (`_row_kernels.recording`)
        return True
    if not tensor.is_cuda and not interpreter_active():
        raise RuntimeError(
            "Backend.TRITON on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 before "
            "`triton` is first imported (megatron-core imports it)."
        )
    return True


@dataclass(frozen=True)
class LossSpec:
    """Everything per-row kernels need to know about the loss (hashable: it picks kernel variants).

    Per valid token: loss = kd_scale * D(P_T || Q_T) + ce_weight * CE(student at T=1, label), with
    P_T = softmax(teacher / T), Q_T = softmax(student / T) and kd_scale = kd_weight * (T^2 if scale_t2).
    """

    divergence: Divergence
    beta: float
    temperature: float
    kd_scale: float
    ce_weight: float

    @property
    def inv_temp(self) -> float:
        return 1.0 / self.temperature

    @property
    def has_ce(self) -> bool:
        return self.ce_weight != 0.0

    @property
    def log_beta(self) -> float:
        return math.log(self.beta) if self.beta > 0 else -math.inf

    @property
    def log_1m_beta(self) -> float:
        return math.log1p(-self.beta) if self.beta < 1 else -math.inf


def make_spec(
    divergence: Divergence, beta: float, temperature: float, scale_t2: bool, kd_weight: float, ce_weight: float
) -> LossSpec:
    """Validate options; JSD at beta 0 / 1 is mapped to the forward / reverse KL kernels (same value)."""
    divergence = Divergence(divergence)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if divergence is Divergence.JSD and beta == 0.0:
        divergence = Divergence.FORWARD_KL
    elif divergence is Divergence.JSD and beta == 1.0:
        divergence = Divergence.REVERSE_KL
    kd_scale = float(kd_weight) * (temperature**2 if scale_t2 else 1.0)
    return LossSpec(divergence, float(beta), float(temperature), kd_scale, float(ce_weight))


def token_weights(
    n_tokens: int,
    device: torch.device,
    labels: torch.Tensor | None,
    ignore_index: int,
    loss_mask: torch.Tensor | None,
    reduction: Reduction,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-token weight [n] (fp32; float64 for float64 logits): loss_mask * (label != ignore_index), divided by its sum for MEAN.

    Stays on the device (no host sync); MEAN over zero valid tokens gives weights 0, so a loss of 0.
    """
    weights = torch.ones(n_tokens, device=device, dtype=dtype)
    if loss_mask is not None:
        weights = weights * loss_mask.reshape(-1).to(device=device, dtype=dtype)
    if labels is not None:
        weights = weights * (labels.reshape(-1) != ignore_index).to(dtype)
    if Reduction(reduction) is Reduction.MEAN:
        total = weights.sum()
        weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    return weights
