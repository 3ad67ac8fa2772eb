"""Section `kernels`: compiled Triton vs the torch mirror vs the naive reference, values and gradients.

Every case of the profile (odd shapes, production vocabularies, one N x V > 2^31 case) is run three ways:
``backend=TRITON`` (compiled on CUDA; the interpreter on CPU), ``backend=TORCH`` (the mirror that CPU runs
use) and `nemo_subnet.kernels.reference` (autograd on the formulas, fp32 leaves). The reference always
runs in row chunks (the loss is a sum over rows, so a chunk's SUM over the total token weight is its share
of the MEAN); in the huge case the mirror does too, so neither needs several fp32 copies of 2.5e9 logits.

Tolerances (as tests/kernels): losses rtol 1e-5 (x5 on CUDA: the GPU's approximate exp / log), atol 1e-6
(5e-6 on CUDA); gradients elementwise |a - e| <= rtol |e| + rtol max|e| with rtol 1e-5 fp32 (x5 on CUDA),
1.6e-2 bf16 (its rounding). The fused op in bf16 also rounds its logits (and each chunk's grad_weight product,
summed in fp32): 1e-3 on the loss and 3e-2 on gradients.
"""

from __future__ import annotations

import math
import socket
import time

import torch

from .common import progress
from .profiles import PROFILES, LogitCase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
IGNORE = -100


def tolerances(case: LogitCase, device: torch.device) -> tuple[float, float, float]:
    """(loss rtol, loss atol, gradient rtol) for the case on this device."""
    cuda = device.type == "cuda"
    loss_rtol, loss_atol = 1e-5 * (5 if cuda else 1), 5e-6 if cuda else 1e-6
    grad_rtol = 1.6e-2 if case.dtype == "bfloat16" else 1e-5 * (5 if cuda else 1)
    if case.op == "fused_linear_kd_loss" and case.dtype == "bfloat16":
        loss_rtol, grad_rtol = 1e-3, 3e-2
    return loss_rtol, loss_atol, grad_rtol


class GradDiff:
    """Elementwise comparison accumulated over row chunks: passes when every element satisfies
    |a - e| <= rtol |e| + rtol max|e| (max over the whole tensor), the rule of tests/kernels/kd_testing."""

    def __init__(self, rtol: float):
        self.rtol = rtol
        self.max_abs_err = 0.0
        self.max_abs_expected = 0.0
        self.excess = -math.inf  # max of |a - e| - rtol |e|
        self.finite = True

    def add(self, actual: torch.Tensor, expected: torch.Tensor) -> None:
        a, e = actual.float(), expected.float()
        self.finite = self.finite and bool(torch.isfinite(a).all())
        err = (a - e).abs()
        self.max_abs_err = max(self.max_abs_err, float(err.max()))
        self.max_abs_expected = max(self.max_abs_expected, float(e.abs().max()))
        self.excess = max(self.excess, float((err - self.rtol * e.abs()).max()))

    @property
    def ok(self) -> bool:
        return self.finite and self.excess <= self.rtol * self.max_abs_expected + 1e-12

    def summary(self) -> str:
        scale = self.max_abs_expected or 1.0
        return f"max abs err {self.max_abs_err:.2e} = {self.max_abs_err / scale:.2e} x max|ref| (rtol {self.rtol:g})"


def _inputs(case: LogitCase, device: torch.device, seed: int) -> dict:
    """Tensors of one case, drawn on the device (the huge case would take minutes on a CPU generator)."""
    from nemo_subnet.runtime import seeded_generator
    g = seeded_generator(device, seed)
    dt, n, v = DTYPES[case.dtype], case.n, case.v
    valid = case.vocab_size or v
    out: dict = {}
    if case.labels:
        labels = torch.randint(0, valid, (n,), generator=g, device=device)
        labels[::7] = IGNORE
        out["labels"] = labels
    if case.loss_mask:
        out["loss_mask"] = (torch.rand(n, generator=g, device=device) > 0.2).float()
    if case.op == "fused_linear_kd_loss":
        h, h_t = case.h, max(8, case.h * 3 // 4)
        out["hidden"] = torch.randn(n, h, generator=g, device=device, dtype=dt)
        out["weight"] = torch.randn(v, h, generator=g, device=device, dtype=dt) * h**-0.5 * 2
        t_hidden = torch.randn(n, h_t, generator=g, device=device, dtype=dt)
        t_weight = torch.randn(v, h_t, generator=g, device=device, dtype=dt) * h_t**-0.5 * 2
        if case.teacher_logits:
            out["teacher_logits"] = t_hidden @ t_weight.t()  # [n, v]
        else:
            out["teacher_hidden"], out["teacher_weight"] = t_hidden, t_weight
        return out
    teacher = torch.randn(n, v, generator=g, device=device, dtype=dt).mul_(2)  # [n, v]
    student = torch.randn(n, v, generator=g, device=device, dtype=dt).mul_(2).add_(teacher, alpha=0.7)
    out["student"], out["teacher"] = student, teacher
    if case.op == "topk_kd_loss":
        values, indices = teacher[:, :valid].float().topk(case.k, dim=-1)
        out["values"], out["indices"] = values.to(dt), indices
        del out["teacher"]
    return out


def _options(case: LogitCase) -> dict:
    from nemo_subnet.kernels import Divergence

    opts = dict(divergence=Divergence(case.divergence), beta=case.beta, temperature=case.temperature,
                vocab_size=case.vocab_size)
    if case.op != "topk_kd_loss":
        opts["ce_weight"] = case.ce_weight
    return opts


def _total_weight(case: LogitCase, t: dict, device) -> torch.Tensor:
    w = torch.ones(case.n, device=device)
    if "loss_mask" in t:
        w = w * t["loss_mask"]
    if "labels" in t:
        w = w * (t["labels"] != IGNORE).float()
    return w.sum().clamp_min(1.0)


def _rows(t: dict, key: str, rows: slice):
    return None if key not in t else t[key][rows]


def _loss(case: LogitCase, t: dict, backend, rows: slice, leaves: dict, reduction, group):
    """The op (or its reference when backend is None) on rows ``rows`` with the given leaf tensors."""
    from nemo_subnet.kernels import fused_linear_kd_loss, kd_loss, reference, topk_kd_loss, vocab_parallel_kd_loss

    common = dict(_options(case), labels=_rows(t, "labels", rows), loss_mask=_rows(t, "loss_mask", rows),
                  reduction=reduction)
    if case.op == "fused_linear_kd_loss":
        h, w = leaves["hidden"], leaves["weight"]
        if backend is None:
            teacher = t["teacher_logits"][rows] if case.teacher_logits else \
                t["teacher_hidden"][rows] @ t["teacher_weight"].t()  # [c, v]
            return reference.kd_loss_reference(h @ w.t(), teacher, **common)
        teacher = dict(teacher_logits=t["teacher_logits"][rows]) if case.teacher_logits else \
            dict(teacher_hidden=t["teacher_hidden"][rows], teacher_weight=t["teacher_weight"])
        return fused_linear_kd_loss(h, w, backend=backend, **teacher, **common)
    s = leaves["student"]
    if case.op == "topk_kd_loss":
        fn = reference.topk_kd_loss_reference if backend is None else topk_kd_loss
        extra = {} if backend is None else dict(backend=backend)
        return fn(s, t["values"][rows], t["indices"][rows], **common, **extra)
    if backend is None:
        return reference.kd_loss_reference(s, t["teacher"][rows], **common)
    if case.op == "vocab_parallel_kd_loss":
        return vocab_parallel_kd_loss(s, t["teacher"][rows], group=group, vocab_start_index=0, backend=backend,
                                      **common)
    return kd_loss(s, t["teacher"][rows], backend=backend, **common)


def _leaf_names(case: LogitCase) -> tuple[str, ...]:
    return ("hidden", "weight") if case.op == "fused_linear_kd_loss" else ("student",)


def _chunked(case: LogitCase, t: dict, backend, group, fp32_leaves: bool, chunk_elements: int):
    """(loss, {leaf: grad}) of the MEAN loss, computed as sum over row chunks of SUM / total weight."""
    from nemo_subnet.kernels import Reduction

    names = _leaf_names(case)
    device = t[names[0]].device
    total = _total_weight(case, t, device)
    chunk = max(1, min(case.n, chunk_elements // case.v))
    loss = torch.zeros((), dtype=torch.float64, device=device)
    grads = {"student": torch.empty_like(t["student"])} if "student" in names else \
        {"hidden": torch.empty_like(t["hidden"]), "weight": torch.zeros_like(t["weight"], dtype=torch.float32)}
    shared_weight = None
    if "weight" in names:
        shared_weight = t["weight"].detach().requires_grad_()
    for start in range(0, case.n, chunk):
        rows = slice(start, min(start + chunk, case.n))
        if "student" in names:
            s = t["student"][rows].detach()
            leaves = {"student": (s.float() if fp32_leaves else s.clone()).requires_grad_()}
        else:
            leaves = {"hidden": t["hidden"][rows].detach().clone().requires_grad_(), "weight": shared_weight}
        part = _loss(case, t, backend, rows, leaves, Reduction.SUM, group) / total
        got = torch.autograd.grad(part, [leaves[k] for k in names])
        loss += part.detach().double()
        for name, grad in zip(names, got):
            if name == "weight":
                grads["weight"] += grad.float()
            else:
                grads[name][rows] = grad.to(grads[name].dtype)
        del part, got, leaves
    return loss.float(), grads


def _full(case: LogitCase, t: dict, backend, group):
    names = _leaf_names(case)
    from nemo_subnet.kernels import Reduction

    leaves = {k: t[k].detach().requires_grad_() for k in names}  # new leaves on the same storage: no copy
    loss = _loss(case, t, backend, slice(None), leaves, Reduction.MEAN, group)
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return loss.detach().float(), dict(zip(names, grads))


def _compare(rec, label: str, which: str, case: LogitCase, device, loss, grads, ref_loss, ref_grads,
             chunk_elements: int) -> None:
    loss_rtol, loss_atol, grad_rtol = tolerances(case, device)
    loss_err = abs(float(loss) - float(ref_loss))
    loss_ok = math.isfinite(float(loss)) and loss_err <= loss_atol + loss_rtol * abs(float(ref_loss))
    details, grads_ok = [f"loss {float(loss):.6g} vs {float(ref_loss):.6g} (|d| {loss_err:.1e})"], True
    for name, grad in grads.items():
        diff = GradDiff(grad_rtol)
        chunk = max(1, chunk_elements // max(1, grad.shape[-1]))
        for start in range(0, grad.shape[0], chunk):
            diff.add(grad[start:start + chunk], ref_grads[name][start:start + chunk])
        grads_ok = grads_ok and diff.ok
        details.append(f"grad {name}: {diff.summary()}")
    rec.check(f"{label}: {which} == reference", loss_ok and grads_ok, "; ".join(details))


def _process_group(needed: bool, device: torch.device):
    """A one-rank process group for vocab_parallel_kd_loss at TP=1 (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist

    if not needed:
        return None
    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1)
    return dist.group.WORLD


def run(ctx, rec) -> None:
    from nemo_subnet.kernels import Backend, interpreter_active

    profile = PROFILES[ctx.profile]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here (also torch's default)
    rec.number("device", str(device))
    rec.number("triton_interpreter", interpreter_active())
    rec.number("huge_elements", profile.huge_elements)
    rec.number("huge_over_2^31", profile.huge_elements > 2**31)
    group = _process_group(any(c.op == "vocab_parallel_kd_loss" for c in profile.kernel_cases), device)
    cases = []
    for index, case in enumerate(profile.kernel_cases):
        started = time.perf_counter()
        label = f"#{index} {case.label}" + (" [N*V > 2^31]" if case.huge and profile.huge_elements > 2**31 else "")
        progress(rec.section, f"case {label}")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = _inputs(case, device, seed=index)
        chunk = profile.chunk_elements
        ref_loss, ref_grads = _chunked(case, t, None, group, fp32_leaves=True, chunk_elements=chunk)
        tri_loss, tri_grads = _full(case, t, Backend.TRITON, group)
        _compare(rec, label, "triton", case, device, tri_loss, tri_grads, ref_loss, ref_grads, chunk)
        del tri_grads
        if case.huge:  # row chunks: at 2.5e9 logits the mirror's fp32 temporaries would not all fit
            mir_loss, mir_grads = _chunked(case, t, Backend.TORCH, group, fp32_leaves=False, chunk_elements=chunk)
        else:
            mir_loss, mir_grads = _full(case, t, Backend.TORCH, group)
        _compare(rec, label, "torch mirror", case, device, mir_loss, mir_grads, ref_loss, ref_grads, chunk)
        entry = {"case": label, "loss_reference": float(ref_loss), "loss_triton": float(tri_loss),
                 "loss_mirror": float(mir_loss), "seconds": round(time.perf_counter() - started, 2)}
        if device.type == "cuda":
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        cases.append(entry)
        rec.number("cases", cases)
        del t, ref_grads, mir_grads
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if group is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
