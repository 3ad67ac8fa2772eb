"""What the fused output ops pay for gradients: nothing without autograd, fp32 accumulation with it.

Both fused ops compute their gradients in forward. Under ``no_grad`` / ``set_grad_enabled(False)`` (the
logged CE at alpha_ce = 0, validation, the search) no graph is built, so they must run only the forward
matmul per chunk: no grad kernel, no ``grad_hidden``, no zero-filled ``[V, H]`` buffer, no two extra GEMMs
(autograd's ``needs_input_grad`` follows ``requires_grad``, not the grad mode). With autograd,
``grad_weight`` is a sum over chunks: it is accumulated in fp32 (as megatron's ``main_grad``) and the upstream
scale (1 / num_microbatches) is applied in fp32, each gradient rounded to the weight's dtype once.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nemo_subnet.kernels import Backend, fused_linear_kd_loss, fused_linear_topk_kd_loss

N, H, V = 96, 32, 200
GEMMS = {"mm", "addmm", "addmm_", "matmul", "bmm", "baddbmm"}


class _OpCounter(TorchDispatchMode):
    """Counts GEMMs and the new storages of ``[V, H]`` elements or more that ops allocate (views excluded)."""

    def __init__(self, big: int):
        super().__init__()
        self.gemms = 0
        self.big = big
        self.big_tensors = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in GEMMS:
            self.gemms += 1
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        seen = {a.untyped_storage().data_ptr() for a in _tensors(args, kwargs)}
        self.big_tensors += sum(isinstance(t, torch.Tensor) and t.numel() >= self.big
                                and t.untyped_storage().data_ptr() not in seen for t in outs)
        return out


def _tensors(args, kwargs):
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (tuple, list)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def _inputs(dtype=torch.float32, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = {"hidden": torch.randn(N, H, generator=g).to(dtype).requires_grad_(),
         "weight": (torch.randn(V, H, generator=g) * H**-0.5).to(dtype).requires_grad_(),
         "t_hidden": torch.randn(N, H, generator=g).to(dtype),
         "t_weight": (torch.randn(V, H, generator=g) * H**-0.5).to(dtype),
         "labels": torch.randint(0, V, (N,), generator=g)}
    x["topk"] = (x["t_hidden"] @ x["t_weight"].T).topk(8, dim=-1)  # (values, ids) [N, 8]
    return x


def _as_float64(x: dict) -> dict:
    out = {k: v.detach().double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in x.items()}
    out["hidden"].requires_grad_()
    out["weight"].requires_grad_()
    out["topk"] = (x["topk"][0].double(), x["topk"][1])
    return out


def _call(op: str, x: dict, chunk: int, **kw):
    common = dict(chunk_size=chunk, backend=Backend.TORCH, **kw)
    if op == "ce":
        return fused_linear_kd_loss(x["hidden"], x["weight"], labels=x["labels"], ce_weight=1.0, **common)
    if op == "kd":
        return fused_linear_kd_loss(x["hidden"], x["weight"], teacher_hidden=x["t_hidden"],
                                    teacher_weight=x["t_weight"], **common)
    return fused_linear_topk_kd_loss(x["hidden"], x["weight"], *x["topk"], **common)


@pytest.mark.parametrize("op,forward_gemms", [("ce", 1), ("kd", 2), ("topk", 1)])
@pytest.mark.parametrize("off", ["no_grad", "set_grad_enabled"])
def test_without_autograd_only_the_forward_matmuls_run(op, forward_gemms, off):
    x = _inputs()
    chunk, chunks = 16, N // 16
    with torch.no_grad() if off == "no_grad" else torch.set_grad_enabled(False):
        with _OpCounter(big=V * H) as count:
            loss = _call(op, x, chunk)
    assert not loss.requires_grad
    # before the fix, per chunk: two more GEMMs (grad_hidden, grad_weight) and the grad kernel; per call a
    # zero-filled [V, H] grad_weight and an [N, H] grad_hidden
    assert count.gemms == forward_gemms * chunks, count.gemms
    assert count.big_tensors == 0, count.big_tensors
    with torch.enable_grad():
        with_grad = _call(op, x, chunk)
    assert torch.equal(loss, with_grad.detach())  # the loss itself is the same


@pytest.mark.parametrize("op,forward_gemms", [("ce", 1), ("kd", 2), ("topk", 1)])
def test_with_autograd_each_chunk_runs_its_gradient_matmuls(op, forward_gemms):
    x = _inputs()
    chunk, chunks = 16, N // 16
    with _OpCounter(big=V * H) as count:
        loss = _call(op, x, chunk)
    assert loss.requires_grad
    assert count.gemms == (forward_gemms + 2) * chunks  # + grad_hidden and grad_weight per chunk


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("op", ["ce", "kd", "topk"])
def test_grad_weight_is_accumulated_over_chunks_in_fp32(op):
    """bf16: grad_weight summed over 96 chunks of one token is as close to the float64 answer as one chunk's.

    One chunk has one GEMM and one rounding of grad_weight (plus the bf16 logits' own error); accumulated in
    bf16, 96 chunks rounded the running sum 96 times (2.9-4.7x the one-chunk error before the fix)."""
    x = _inputs(torch.bfloat16, seed=1)
    x64 = _as_float64(x)
    want = torch.autograd.grad(_call(op, x64, chunk=N, reduction="sum"), x64["weight"])[0]
    one_chunk, per_token = (torch.autograd.grad(_call(op, x, chunk=c, reduction="sum"), x["weight"])[0] for c in (N, 1))
    assert per_token.dtype == torch.bfloat16
    ratio = _relative_error(per_token, want) / _relative_error(one_chunk, want)
    assert ratio <= 1.5, ratio  # fp32 accumulation: 1.04-1.28 (each chunk's bf16 product adds a little)


@pytest.mark.parametrize("op", ["ce", "kd"])
def test_upstream_scale_is_applied_in_fp32(op):
    """megatron divides each micro-batch's loss by num_microbatches: 1/3 in bf16 is 0.3340 (+0.2 %), a bias on
    every gradient if the scale were rounded to the gradient's dtype first."""
    x = _inputs(torch.bfloat16, seed=2)
    g_hidden, g_weight = torch.autograd.grad(_call(op, x, chunk=16, reduction="sum") / 3.0, (x["hidden"], x["weight"]))
    x64 = _as_float64(x)
    want_hidden, want_weight = torch.autograd.grad(_call(op, x64, chunk=N, reduction="sum") / 3.0,
                                                   (x64["hidden"], x64["weight"]))
    for got, want in ((g_hidden, want_hidden), (g_weight, want_weight)):
        big = want.abs() > 0.1 * want.abs().max()
        bias = float((got.double()[big] / want[big] - 1.0).mean())  # rounding errors average out, a bias does not
        assert abs(bias) < 4e-4, bias
