"""torchrun worker: the fused-output ops at TP=2 equal the full-vocabulary single-process references.

Every rank builds the same full inputs (same seed) on its compute device, keeps its shard of the (padded)
output weights, runs the op over the group and checks, against (a) the pure-torch reference on
materialised full-vocabulary logits and (b) the same op at TP=1 (group None, full weights):
    loss                                            equal on every rank
    grad_weight of the shard                        the reference's rows of this shard
    grad_hidden summed over ranks (what Megatron's copy_to_tensor_model_parallel_region all-reduces)
and, for the teacher top-k selection, the same values and ids. Prints
"FO OK <case> rank=<r> backend=<b> max|diff| loss=.. hidden=.. weight=.." per case.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
import torch.distributed as dist
from fused_output_testing import ce_reference, full_topk, make_inputs, topk_reference

from nemo_subnet.kernels import (Backend, Divergence, Reduction, fused_linear_kd_loss, fused_linear_sampled_kd_loss,
                                 fused_linear_topk_kd_loss, vocab_parallel_sample, vocab_parallel_topk,
                                 vocab_parallel_topk_kd_loss)
from nemo_subnet.kernels.reference import kd_loss_reference, sampled_kd_loss_reference
from nemo_subnet.runtime import compute_device
from nemo_subnet.runtime.cpu_backend import install as install_cpu_backend

warnings.filterwarnings("ignore", message="invalid value encountered", category=RuntimeWarning)

FKL, RKL, JSD = Divergence.FORWARD_KL, Divergence.REVERSE_KL, Divergence.JSD
CASES = {  # name: (op, options)
    "fused_fkl_T2_ce": ("fused", dict(teacher="hidden", divergence=FKL, temperature=2.0, ce_weight=0.5)),
    "fused_jsd_ce_logits": ("fused", dict(teacher="logits", divergence=JSD, beta=0.5, ce_weight=0.3)),
    "fused_rkl_sum": ("fused", dict(teacher="hidden", divergence=RKL, reduction=Reduction.SUM)),
    "fused_ce_only": ("fused", dict(teacher=None, ce_weight=1.0)),
    "fused_fkl_ce_bf16": ("fused", dict(teacher="hidden", divergence=FKL, ce_weight=0.5, dtype=torch.bfloat16)),
    "select_logits": ("select", dict(source="logits")),
    "select_hidden": ("select", dict(source="hidden")),
    "topk_fkl_T2_ce": ("topk_logits", dict(divergence=FKL, temperature=2.0, ce_weight=0.5)),
    "topk_jsd_sum": ("topk_logits", dict(divergence=JSD, beta=0.3, reduction=Reduction.SUM)),
    "fused_topk_fkl_T2_ce": ("topk_fused", dict(divergence=FKL, temperature=2.0, ce_weight=0.5)),
    "fused_topk_jsd": ("topk_fused", dict(divergence=JSD, beta=0.5)),
    "fused_topk_jsd_ce_bf16": ("topk_fused", dict(divergence=JSD, beta=0.5, ce_weight=0.5, dtype=torch.bfloat16)),
    "sample_logits": ("sample", dict(source="logits", method="sample")),
    "sample_hidden": ("sample", dict(source="hidden", method="sample")),
    "sample_topk_hidden": ("sample", dict(source="hidden", method="topk")),
    "fused_sampled_T2_ce": ("sampled_fused", dict(method="sample", temperature=2.0, ce_weight=0.5)),
    "fused_sampled_sum": ("sampled_fused", dict(method="sample", reduction=Reduction.SUM)),
    "fused_topk_tail_ce": ("sampled_fused", dict(method="topk", temperature=2.0, ce_weight=0.3)),
    "fused_sampled_ce_bf16": ("sampled_fused", dict(method="sample", ce_weight=0.5, dtype=torch.bfloat16)),
}
SHAPES = {"default": (37, 16, 512, 1001, 16), "small": (11, 16, 96, 181, 8)}  # n, h, v_local, vocab, k
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 5e-2)}  # (loss rtol, grad rtol * max|grad|)
UPSTREAM = 1.7  # a non-unit upstream grad: backward must scale the stored gradients


def _max_diff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def _check(got, want, dtype, grad: bool):
    loss_rtol, grad_rtol = TOLERANCES[dtype]
    if grad:
        torch.testing.assert_close(got.float(), want.float(), rtol=grad_rtol,
                                   atol=grad_rtol * float(want.abs().max()))
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=loss_rtol, atol=1e-6 if dtype == torch.float32 else 1e-3)


def _losses(op, opts, x, v_local, start, vocab, backend, group, k):
    """(op's loss with this rank's shard over group, the same op at TP=1, reference loss) — each a
    function of (hidden, weight leaves) so gradients can be taken."""
    teacher_logits = (x["teacher_hidden"] @ x["teacher_weight"].T).detach()  # [n, v]: test-side only
    common = dict(labels=x["labels"], loss_mask=x["loss_mask"], vocab_size=vocab,
                  reduction=opts.get("reduction", Reduction.MEAN), ce_weight=opts.get("ce_weight", 0.0))
    kd = dict(divergence=opts.get("divergence", FKL), beta=opts.get("beta", 0.5), temperature=opts.get("temperature", 1.0))
    if op == "fused":
        def teacher(shard: bool):
            if opts["teacher"] == "hidden":
                tw = x["teacher_weight"][start:start + v_local] if shard else x["teacher_weight"]
                return dict(teacher_hidden=x["teacher_hidden"], teacher_weight=tw)
            if opts["teacher"] == "logits":
                return dict(teacher_logits=teacher_logits[:, start:start + v_local] if shard else teacher_logits)
            return {}
        chunked = dict(chunk_size=8, backend=backend, **common, **(kd if opts["teacher"] else {}))
        tp = lambda h, w: fused_linear_kd_loss(h, w, group=group, vocab_start_index=start, **teacher(True), **chunked)  # noqa: E731
        tp1 = lambda h, w: fused_linear_kd_loss(h, w, **teacher(False), **chunked)  # noqa: E731
        if opts["teacher"]:
            ref = lambda h, w: kd_loss_reference(h @ w.T, teacher_logits, **common, **kd)  # noqa: E731
        else:
            ce = {key: common[key] for key in ("labels", "loss_mask", "reduction", "vocab_size")}
            ref = lambda h, w: common["ce_weight"] * ce_reference(h @ w.T, **ce)  # noqa: E731  (CE only)
        return tp, tp1, ref
    if op == "sampled_fused":
        uniforms = torch.rand(teacher_logits.shape[0], k, generator=torch.Generator().manual_seed(5)).to(teacher_logits.device)
        ids, probs = vocab_parallel_sample(teacher_logits, k=k, method=opts["method"], uniforms=uniforms,
                                           temperature=kd["temperature"], vocab_size=vocab)
        probs = probs if opts["method"] == "topk" else None
        sparse = dict(tail=opts["method"] == "topk", temperature=kd["temperature"], **common)
        ref = lambda h, w: sampled_kd_loss_reference(h @ w.T, ids, probs, **sparse)  # noqa: E731
        tp = lambda h, w: fused_linear_sampled_kd_loss(h, w, ids, probs, group=group, vocab_start_index=start,  # noqa: E731
                                                       chunk_size=8, backend=backend, **sparse)
        tp1 = lambda h, w: fused_linear_sampled_kd_loss(h, w, ids, probs, chunk_size=8, backend=backend, **sparse)  # noqa: E731
        return tp, tp1, ref
    values, ids = full_topk(teacher_logits, k, vocab)
    ref = lambda h, w: topk_reference(h @ w.T, values, ids, **common, **kd)  # noqa: E731
    if op == "topk_logits":
        tp = lambda h, w: vocab_parallel_topk_kd_loss(h @ w.T, values, ids, group=group, vocab_start_index=start,  # noqa: E731
                                                      backend=backend, **common, **kd)
        tp1 = lambda h, w: vocab_parallel_topk_kd_loss(h @ w.T, values, ids, backend=backend, **common, **kd)  # noqa: E731
        return tp, tp1, ref
    tp = lambda h, w: fused_linear_topk_kd_loss(h, w, values, ids, group=group, vocab_start_index=start,  # noqa: E731
                                                chunk_size=8, backend=backend, **common, **kd)
    tp1 = lambda h, w: fused_linear_topk_kd_loss(h, w, values, ids, chunk_size=8, backend=backend, **common, **kd)  # noqa: E731
    return tp, tp1, ref


def run_case(name, op, opts, shape, backend, group, rank, world, device) -> str:
    n, h_dim, v_local, vocab, k = shape
    dtype = opts.get("dtype", torch.float32)
    x = make_inputs(n, h_dim, world * v_local, vocab, seed=sum(map(ord, name)), device=device, dtype=dtype)
    start = rank * v_local
    if op == "select":
        teacher_logits = x["teacher_hidden"] @ x["teacher_weight"].T  # [n, v]
        if opts["source"] == "logits":
            values, ids = vocab_parallel_topk(teacher_logits[:, start:start + v_local], k=k, group=group,
                                              vocab_start_index=start, vocab_size=vocab)
        else:
            values, ids = vocab_parallel_topk(k=k, hidden=x["teacher_hidden"], group=group, vocab_start_index=start,
                                              weight=x["teacher_weight"][start:start + v_local], vocab_size=vocab,
                                              chunk_size=8)
        want_values, want_ids = full_topk(teacher_logits, k, vocab)
        assert torch.equal(ids, want_ids), (ids, want_ids)
        torch.testing.assert_close(values, want_values, rtol=1e-6, atol=1e-6)
        return f"values={_max_diff(values, want_values):.1e}"

    if op == "sample":
        return _check_sample(opts, x, v_local, start, vocab, group, k)
    hidden = x["hidden"].detach().clone().requires_grad_()  # [n, h], replicated
    w_local = x["weight"].detach()[start:start + v_local].clone().requires_grad_()  # [v_local, h]
    tp, tp1, ref = _losses(op, opts, x, v_local, start, vocab, backend, group, k)
    go = torch.full((), UPSTREAM, device=device)
    loss = tp(hidden, w_local)
    g_hidden, g_weight = torch.autograd.grad(loss, (hidden, w_local), go)
    g_hidden = g_hidden.clone()
    dist.all_reduce(g_hidden, group=group)  # what copy_to_tensor_model_parallel_region does in backward
    diffs = {}
    for label, fn in (("ref", ref), ("tp1", tp1)):
        h_full = x["hidden"].detach().clone().requires_grad_()
        w_full = x["weight"].detach().clone().requires_grad_()
        if label == "ref":  # the reference in fp32 on the same (possibly bf16-rounded) inputs
            h_full, w_full = (t.detach().float().requires_grad_() for t in (h_full, w_full))
        want = fn(h_full, w_full)
        want_h, want_w = torch.autograd.grad(want, (h_full, w_full), go.to(want.dtype))
        want_w = want_w[start:start + v_local]
        _check(loss, want, dtype, grad=False)
        _check(g_hidden, want_h, dtype, grad=True)
        _check(g_weight, want_w, dtype, grad=True)
        assert g_weight.dtype == dtype and g_hidden.dtype == dtype
        diffs[label] = (_max_diff(loss, want), _max_diff(g_hidden, want_h), _max_diff(g_weight, want_w))
    return " ".join(f"{label}: loss={d[0]:.1e} hidden={d[1]:.1e} weight={d[2]:.1e}" for label, d in diffs.items())


def _check_sample(opts, x, v_local, start, vocab, group, k) -> str:
    """The teacher's draws (or top-k with masses) at TP=2 equal the single-device ones: the same uniforms land
    on the same ids (the two CDFs differ by fp32 rounding only), the masses to 1e-5."""
    teacher_logits = x["teacher_hidden"] @ x["teacher_weight"].T  # [n, v]
    n = teacher_logits.shape[0]
    uniforms = torch.rand(n, 4 * k, generator=torch.Generator().manual_seed(6)).to(teacher_logits.device)
    args = dict(k=4 * k if opts["method"] == "sample" else k, method=opts["method"], uniforms=uniforms,
                temperature=1.5, vocab_size=vocab)
    if opts["source"] == "logits":
        got = vocab_parallel_sample(teacher_logits[:, start:start + v_local], group=group, vocab_start_index=start, **args)
    else:
        got = vocab_parallel_sample(hidden=x["teacher_hidden"], weight=x["teacher_weight"][start:start + v_local],
                                    group=group, vocab_start_index=start, chunk_size=8, **args)
    want = vocab_parallel_sample(teacher_logits, **args)
    assert torch.equal(got[0], want[0]), (got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)
    return f"probs={_max_diff(got[1], want[1]):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=[b.value for b in Backend], default="torch")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--shape", choices=SHAPES, default="default")
    args = parser.parse_args()
    install_cpu_backend()  # CPU: megatron's CPU backend, in device-discipline mode when the suite asks for it
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = compute_device()
    for name in args.cases.split(","):
        op, opts = CASES[name]
        detail = run_case(name, op, opts, SHAPES[args.shape], Backend(args.backend), dist.group.WORLD, rank, world, device)
        print(f"FO OK {name} rank={rank} backend={args.backend} max|diff| {detail}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
