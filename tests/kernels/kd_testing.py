"""Shared helpers of the kernel tests: backend parameters, tolerances, inputs."""

from __future__ import annotations

import pytest
import torch

from nemo_subnet.kernels import Backend

# Where kernel tests put their tensors: CUDA where it exists (Triton compiled for it), else the CPU (Triton's
# interpreter; tests/kernels/conftest.py turns it on). Also the `device` fixture.
DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
BACKENDS = [pytest.param(Backend.TORCH, id="torch"), pytest.param(Backend.TRITON, id="triton", marks=pytest.mark.triton)]

# Relative tolerance per input dtype. Losses are fp32 whatever the input dtype (same maths on the same
# values), so 1e-5 for all; gradients come back in the input dtype, so its rounding.
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
GRAD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
# On CUDA, compiled Triton evaluates exp / log with the GPU's approximate ex2 / lg2 (a few ulp, plus the
# rounding of x * log2(e)) and torch's reference its own CUDA expf / logf: a log-sum-exp of ~10 then
# carries ~1e-6 absolute error, so fp32 losses and gradients get 5x looser bounds there (a wrong formula is
# off by orders of magnitude more). bf16 / fp16 gradients are dominated by their own rounding either way.
CUDA_FP32_FACTOR = 5.0


def _rtol(table: dict, dtype: torch.dtype, device: torch.device, grad: bool) -> float:
    on_gpu_fp32 = dtype is not torch.float64 if not grad else dtype is torch.float32  # loss maths is fp32
    return table[dtype] * (CUDA_FP32_FACTOR if device.type == "cuda" and on_gpu_fp32 else 1.0)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, grad: bool = False) -> None:
    """Losses: elementwise rtol (atol 1e-6 for losses near 0, 5e-6 on CUDA). Gradients: rtol elementwise plus
    an atol of rtol * max|expected|, i.e. relative to the gradient's scale: entries that are differences of
    near-equal terms (Q - P) carry the fp32 rounding of those terms, in the reference too. The device is
    the expected tensor's."""
    if grad:
        rtol = _rtol(GRAD_RTOL, dtype, expected.device, grad=True)
        atol = rtol * float(expected.abs().max()) + 1e-12
    else:
        rtol = _rtol(LOSS_RTOL, dtype, expected.device, grad=False)
        atol = 5e-6 if expected.device.type == "cuda" else 1e-6
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol)


def logits_pair(n: int, v: int, seed: int, dtype=torch.float32, scale: float = 2.0, device=DEVICE):
    """Student (leaf, requires grad) and teacher logits [n, v] on `device`, correlated like a real
    student/teacher (drawn on the CPU generator, so the values are the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, v, generator=g) * scale
    student = 0.7 * teacher + torch.randn(n, v, generator=g) * scale
    return student.to(device=device, dtype=dtype).requires_grad_(), teacher.to(device=device, dtype=dtype)


def grad_of(loss: torch.Tensor, *leaves: torch.Tensor, grad_output: torch.Tensor | None = None):
    grads = torch.autograd.grad(loss, leaves, grad_outputs=grad_output)
    return grads[0] if len(grads) == 1 else grads
