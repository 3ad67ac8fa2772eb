"""Shared helpers of the kernel tests: backend parameters, tolerances, inputs."""

from __future__ import annotations

import pytest
import torch

from nemo_subnet.kernels import Backend

BACKENDS = [pytest.param(Backend.TORCH, id="torch"), pytest.param(Backend.TRITON, id="triton", marks=pytest.mark.triton)]

# Relative tolerance per input dtype. Losses are fp32 whatever the input dtype (same maths on the same
# values), so 1e-5 for all; gradients come back in the input dtype, so its rounding.
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, grad: bool = False) -> None:
    """Losses: elementwise rtol (atol 1e-6 for losses near 0). Gradients: rtol elementwise plus an atol of
    rtol * max|expected|, i.e. relative to the gradient's scale: entries that are differences of
    near-equal terms (Q - P) carry the fp32 rounding of those terms, in the reference too."""
    if grad:
        rtol = GRAD_RTOL[dtype]
        atol = rtol * float(expected.abs().max()) + 1e-12
    else:
        rtol, atol = LOSS_RTOL[dtype], 1e-6
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol)


def logits_pair(n: int, v: int, seed: int, dtype=torch.float32, scale: float = 2.0):
    """Student (leaf, requires grad) and teacher logits [n, v], correlated like a real student/teacher."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, v, generator=g) * scale
    student = 0.7 * teacher + torch.randn(n, v, generator=g) * scale
    return student.to(dtype).requires_grad_(), teacher.to(dtype)


def grad_of(loss: torch.Tensor, *leaves: torch.Tensor, grad_output: torch.Tensor | None = None):
    grads = torch.autograd.grad(loss, leaves, grad_outputs=grad_output)
    return grads[0] if len(grads) == 1 else grads
