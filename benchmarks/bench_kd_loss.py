"""Benchmark the distillation loss: eager torch, torch.compile, Liger-Kernel (if installed) and ours.

Two ops:
  fused_linear  loss from student hidden [N, H] + weight [V, H] and teacher hidden + weight (forward KL):
                eager/compile materialise both [N, V] logits; Liger's LigerFusedLinearJSD (beta=0: forward KL);
                ours is `fused_linear_kd_loss`.
  logits        forward KL from given [N, V] logits: eager/compile vs `kd_loss`.
Modes fwd / bwd / full; time (median) and peak memory. Defaults: a small grid on CPU, the issue's grid on
CUDA (N in {1024, 8192}, V in {50304, 128256, 151936}, H in {2048, 4096}, bf16). Results are appended to
benchmarks/results/kd_loss_<device>.csv and plotted to kd_loss_<device>.png.

    python benchmarks/bench_kd_loss.py                      # defaults for this machine
    python benchmarks/bench_kd_loss.py --N 8192 --V 128256 --H 4096 --ops fused_linear
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Mode, Provider, append_rows, device_name, git_commit, plot, row, run_case  # noqa: E402

from nemo_subnet.kernels import Divergence, fused_linear_kd_loss, kd_loss  # noqa: E402
from nemo_subnet.kernels.reference import kd_loss_reference  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _fused_inputs(case: dict):
    g = torch.Generator(device=case["device"]).manual_seed(0)
    n, h, v, dt, dev = case["N"], case["H"], case["V"], case["dtype"], case["device"]
    hidden = torch.randn(n, h, generator=g, device=dev).to(dt).requires_grad_()
    weight = (torch.randn(v, h, generator=g, device=dev) * h**-0.5).to(dt).requires_grad_()
    t_hidden = torch.randn(n, h, generator=g, device=dev).to(dt)
    t_weight = (torch.randn(v, h, generator=g, device=dev) * h**-0.5).to(dt)
    return hidden, weight, t_hidden, t_weight


def _eager_fused(hidden, weight, t_hidden, t_weight):
    with torch.no_grad():
        teacher = t_hidden @ t_weight.t()  # [n, v]
    return kd_loss_reference(hidden @ weight.t(), teacher, divergence=Divergence.FORWARD_KL, scale_t2=False)


def _closure(fn, leaves, *args):
    def step():
        for leaf in leaves:
            leaf.grad = None
        return fn(*args)
    return step


def _build_fused(kind: str):
    def build(case: dict):
        hidden, weight, t_hidden, t_weight = _fused_inputs(case)
        if kind == "ours":
            chunk = case.get("chunk_size")
            fn = lambda h, w, th, tw: fused_linear_kd_loss(  # noqa: E731
                h, w, teacher_hidden=th, teacher_weight=tw, scale_t2=False, chunk_size=chunk)
        elif kind == "torch_compile":
            fn = torch.compile(_eager_fused, dynamic=False)
        elif kind == "liger":
            from liger_kernel.transformers import LigerFusedLinearJSD

            liger = LigerFusedLinearJSD(jsd_beta=0.0, temperature=1.0)
            fn = lambda h, w, th, tw: liger(h, w, th, tw)  # noqa: E731
        else:
            fn = _eager_fused
        return _closure(fn, (hidden, weight), hidden, weight, t_hidden, t_weight)
    return build


def _build_logits(kind: str):
    def build(case: dict):
        g = torch.Generator(device=case["device"]).manual_seed(0)
        shape = (case["N"], case["V"])
        teacher = (torch.randn(shape, generator=g, device=case["device"]) * 2).to(case["dtype"])
        student = (torch.randn(shape, generator=g, device=case["device"]) * 2).to(case["dtype"]).requires_grad_()
        eager = lambda s, t: kd_loss_reference(s, t, divergence=Divergence.FORWARD_KL)  # noqa: E731
        fn = {"ours": lambda s, t: kd_loss(s, t, divergence=Divergence.FORWARD_KL),
              "torch_compile": torch.compile(eager, dynamic=False), "torch": eager}[kind]
        return _closure(fn, (student,), student, teacher)
    return build


def _liger_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


PROVIDERS = {
    "fused_linear": [Provider("torch", _build_fused("torch")), Provider("torch_compile", _build_fused("torch_compile")),
                     Provider("liger", _build_fused("liger"), _liger_available), Provider("ours", _build_fused("ours"))],
    "logits": [Provider("torch", _build_logits("torch")), Provider("torch_compile", _build_logits("torch_compile")),
               Provider("ours", _build_logits("ours"))],
}


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--N", type=int, nargs="+", default=[1024, 8192] if cuda else [256, 1024])
    p.add_argument("--V", type=int, nargs="+", default=[50304, 128256, 151936] if cuda else [8192, 16384])
    p.add_argument("--H", type=int, nargs="+", default=[2048, 4096] if cuda else [256])
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16" if cuda else "float32")
    p.add_argument("--ops", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS))
    p.add_argument("--providers", nargs="+", default=["torch", "torch_compile", "liger", "ours"])
    p.add_argument("--modes", nargs="+", choices=[m.value for m in Mode], default=["fwd", "full"])
    p.add_argument("--chunk-size", type=int, default=None, help="ours (fused_linear): tokens per chunk")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out-dir", default=RESULTS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    commit, rows = git_commit(), []
    stem = os.path.join(args.out_dir, f"kd_loss_{device_name(device)}")
    for op in args.ops:
        hs = args.H if op == "fused_linear" else [None]
        for n in args.N:
            for v in args.V:
                for h in hs:
                    case = {"N": n, "V": v, "H": h, "dtype": DTYPES[args.dtype], "device": device,
                            "chunk_size": args.chunk_size}
                    for provider in PROVIDERS[op]:
                        if provider.name not in args.providers or not provider.available(device):
                            continue
                        for mode in map(Mode, args.modes):
                            result = run_case(provider, mode, case, device, args.warmup, args.reps)
                            rows.append(row(device, commit, op, provider.name, mode, case, result))
                            print(f"{op:12s} {provider.name:13s} {mode.value:4s} N={n} V={v} H={h}: "
                                  f"{result.ms:9.2f} ms {result.peak_mb:9.1f} MiB {result.note}", flush=True)
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
    append_rows(stem + ".csv", rows)
    if plot(stem + ".csv", stem + ".png", "distillation loss"):
        print(f"wrote {stem}.csv and {stem}.png")
    else:
        print(f"wrote {stem}.csv (no matplotlib: no plot)")


if __name__ == "__main__":
    main()
