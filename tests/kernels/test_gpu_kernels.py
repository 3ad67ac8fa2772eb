"""Compiled Triton kernels on CUDA vs the torch mirror on the same CUDA tensors: values and gradients, at an
odd shape, at production shapes (4096 tokens x Llama-3's 128256 vocabulary, a Qwen2.5 TP-8 shard), and
at N * V > 2^31 (int64 row offsets). Skipped without CUDA; the CPU suite covers the same maths through
Triton's interpreter at small shapes, and test_aot_compile.py compiles every variant for sm_90 / sm_100.
"""

from __future__ import annotations

import pytest
import torch
from kd_testing import assert_close, grad_of, logits_pair

from nemo_subnet.kernels import Backend, Divergence, Reduction, fused_linear_kd_loss, kd_loss, topk_kd_loss
from nemo_subnet.kernels.kd_loss import logit_kd_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: runs the compiled Triton kernels"),
]

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
# (tokens, columns, true vocabulary): odd sizes with padding (BLOCK 2048 > V, unaligned rows); production
SHAPES = [pytest.param(37, 1271, 1253, id="odd-37x1271"), pytest.param(4096, 128256, 128256, id="llama3-4096x128256")]
DIVERGENCES = [pytest.param(Divergence.FORWARD_KL, id="fkl"), pytest.param(Divergence.REVERSE_KL, id="rkl"),
               pytest.param(Divergence.JSD, id="jsd")]
DEVICE = torch.device("cuda")


def _labels(n: int, vocab: int, seed: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(start, vocab if stop is None else stop, (n,), generator=g)
    labels[::7] = -100
    return labels.to(DEVICE)


def _both_backends(op, leaves, **kwargs):
    """(value, grads) of op with Backend.TRITON and with Backend.TORCH, on the same CUDA tensors."""
    out = []
    for backend in (Backend.TRITON, Backend.TORCH):
        loss = op(backend=backend, **kwargs)
        go = torch.rand(loss.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE) + 0.5
        out.append((loss.detach(), grad_of(loss, *leaves, grad_output=go)))
        del loss
    return out


def _check(compiled, mirror, dtype):
    (loss, grads), (want_loss, want_grads) = compiled, mirror
    assert torch.isfinite(loss).all()
    assert_close(loss, want_loss, dtype)
    for got, want in zip(grads if isinstance(grads, tuple) else (grads,),
                         want_grads if isinstance(want_grads, tuple) else (want_grads,)):
        assert got.dtype == want.dtype
        assert_close(got.float(), want.float(), dtype, grad=True)


@pytest.mark.parametrize("n,v,vocab", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_kd_loss_compiled_matches_mirror(n, v, vocab, dtype, divergence):
    student, teacher = logits_pair(n, v, seed=0, dtype=dtype, device=DEVICE)
    kwargs = dict(divergence=divergence, beta=0.3, temperature=2.0, labels=_labels(n, vocab, 1),
                  vocab_size=vocab, kd_weight=0.7, ce_weight=0.3)
    compiled, mirror = _both_backends(lambda **kw: kd_loss(student, teacher, **kw), (student,), **kwargs)
    _check(compiled, mirror, dtype)
    assert torch.all(compiled[1][:, vocab:] == 0)


@pytest.mark.parametrize("n,v,vocab", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", [Divergence.FORWARD_KL, Divergence.JSD])
def test_topk_compiled_matches_mirror(n, v, vocab, dtype, divergence):
    student, teacher = logits_pair(n, v, seed=2, dtype=dtype, device=DEVICE)
    values, indices = teacher[:, :vocab].float().topk(64, dim=-1)  # [n, 64]
    kwargs = dict(divergence=divergence, beta=0.5, temperature=2.0, vocab_size=vocab)
    compiled, mirror = _both_backends(lambda **kw: topk_kd_loss(student, values, indices, **kw), (student,), **kwargs)
    _check(compiled, mirror, dtype)


@pytest.mark.parametrize("n,h,v,vocab", [pytest.param(37, 64, 1271, 1253, id="odd"),
                                         pytest.param(4096, 1024, 128256, 128256, id="llama3")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", [Divergence.FORWARD_KL, Divergence.JSD])
def test_fused_linear_compiled_matches_mirror(n, h, v, vocab, dtype, divergence):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(n, h, generator=g).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h**-0.5).to(DEVICE, dtype).requires_grad_()
    t_hidden = torch.randn(n, h, generator=g).to(DEVICE, dtype)
    t_weight = (torch.randn(v, h, generator=g) * h**-0.5).to(DEVICE, dtype)
    kwargs = dict(teacher_hidden=t_hidden, teacher_weight=t_weight, divergence=divergence, beta=0.5,
                  labels=_labels(n, vocab, 4), vocab_size=vocab, ce_weight=0.5, temperature=2.0)
    compiled, mirror = _both_backends(lambda **kw: fused_linear_kd_loss(hidden, weight, **kw), (hidden, weight),
                                      **kwargs)
    _check(compiled, mirror, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_vocab_shard_compiled_matches_mirror(dtype, divergence):
    """The last rank's shard of Qwen2.5's vocabulary at TP=8 (padding inside it, labels in and out of it).
    No group: the collectives of vocab_parallel_kd_loss do not change what the kernels compute per shard."""
    n, local, vocab, tp = 4096, 151936 // 8, 151665, 8
    start = (tp - 1) * local
    student, teacher = logits_pair(n, local, seed=5, dtype=dtype, device=DEVICE)
    kwargs = dict(divergence=divergence, beta=0.5, temperature=2.0, scale_t2=True, labels=_labels(n, vocab, 6),
                  ignore_index=-100, loss_mask=None, reduction=Reduction.MEAN, vocab_size=vocab, kd_weight=0.7,
                  ce_weight=0.3, group=None, vocab_start_index=start)
    compiled, mirror = _both_backends(lambda **kw: logit_kd_loss(student, teacher, **kw), (student,), **kwargs)
    _check(compiled, mirror, dtype)
    assert torch.all(compiled[1][:, vocab - start:] == 0)


ROWS_PAST_2_31 = 16768  # x 128256 columns = 2_150_596_608 elements > 2^31: 4.3 GB per bf16 tensor


@pytest.mark.parametrize("op", ["kd_loss", "topk_kd_loss"])
def test_more_than_2_31_logits(op):
    """Rows whose first element lies past 2^31: per-token losses and gradients of the first and last rows
    equal the mirror's on those rows alone (rows are independent with reduction NONE)."""
    n, v = ROWS_PAST_2_31, 128256
    assert (n - 8) * v > 2**31  # the last 8 rows start past 2^31 elements
    g = torch.Generator(device=DEVICE).manual_seed(7)
    student = torch.randn(n, v, generator=g, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    go = torch.rand(n, generator=g, device=DEVICE) + 0.5
    picked = torch.cat([torch.arange(8), torch.arange(n - 8, n)]).to(DEVICE)
    if op == "kd_loss":
        teacher = torch.randn(n, v, generator=g, device=DEVICE, dtype=torch.bfloat16)
        labels = torch.randint(0, v, (n,), generator=g, device=DEVICE)
        kwargs = dict(divergence=Divergence.JSD, beta=0.5, temperature=2.0, ce_weight=0.3, reduction=Reduction.NONE)

        def run(s, rows, backend):
            return kd_loss(s, teacher[rows], labels=labels[rows], backend=backend, **kwargs)
    else:
        values = torch.randn(n, 16, generator=g, device=DEVICE)
        indices = torch.stack([torch.randperm(v, device=DEVICE)[:16] for _ in range(2)]).repeat(n // 2, 1)  # [n, 16]
        kwargs = dict(divergence=Divergence.FORWARD_KL, temperature=2.0, reduction=Reduction.NONE)

        def run(s, rows, backend):
            return topk_kd_loss(s, values[rows], indices[rows], backend=backend, **kwargs)

    few = student.detach()[picked].clone().requires_grad_()  # [16, v]
    loss = run(student, slice(None), Backend.TRITON)  # [n]
    (grad,) = torch.autograd.grad(loss, student, go)
    want = run(few, picked, Backend.TORCH)  # [16]
    (want_grad,) = torch.autograd.grad(want, few, go[picked])
    assert_close(loss.detach()[picked], want.detach(), torch.bfloat16)
    assert_close(grad[picked].float(), want_grad.float(), torch.bfloat16, grad=True)
