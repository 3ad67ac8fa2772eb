"""One-command GPU acceptance run of nemo-subnet on one H100 / H200 (<= 8 minutes; docs/gpu.md).

    python benchmarks/gpu_acceptance.py --out acceptance/        # or: bash benchmarks/gpu_acceptance.sh --out ...

Sections (benchmarks/acceptance/, one child process each, each with its own time budget; a failed
section does not stop the others): environment; setup (data, a bf16 teacher with a Llama-3 vocabulary);
kernels (Triton vs torch mirror vs reference, values and gradients, up to N x V > 2^31); speed (fused linear
+ KD vs eager; torch.compile and Liger-Kernel time-boxed, never failing the section); train_resume (the
default KD run, alpha_ce 0 on the fused output path, through `nemo-subnet train`, SIGKILL, --resume);
kd_step (KD step vs student step + teacher forward, CUDA events; the loss's GEMMs; counted FLOPs); mfu;
hf_parity (import / export on the GPU); search (bf16, candidates per second); parallel (TP=2 and PP=2, 2+
GPUs, else skipped with the reason). Writes <out>/acceptance.json and <out>/acceptance.md (atomically, after
every section), logs under <out>/logs/. Exit code 0 when every section passed or was skipped, 1 when one
failed or did not run, 2 when there is no CUDA GPU (nothing is run).

Developer flag (not in --help; docs/gpu.md): --smoke-cpu runs every section at tiny sizes on CPU (Triton
under TRITON_INTERPRET=1, megatron on its CPU backend) so CI checks this script's logic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the acceptance package and harness.py live beside this script

REFUSAL = "gpu_acceptance: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run"


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="directory for acceptance.json, acceptance.md and logs/ (required)")
    p.add_argument("--work-dir", type=Path, help="scratch space for data, checkpoints and runs (default: a new "
                   "temporary directory, removed at the end unless --keep-work)")
    p.add_argument("--keep-work", action="store_true", help="keep the work directory")
    p.add_argument("--peak-flops", type=float, help="peak FLOP/s per GPU for MFU (default: the table of known GPUs "
                   "in nemo_subnet/training/metrics.py; H100 / H200 989e12 bf16 dense)")
    p.add_argument("--sections", nargs="+", metavar="NAME", help="run only these sections (and what they need)")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run (default: 480 on one GPU, plus the "
                   "parallel section's budget with two or more)")
    p.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                   help="override one section's time budget (repeatable), e.g. --budget train_resume=300")
    p.add_argument("--smoke-cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_ctx", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    return p, p.parse_args(argv)


def cuda_available() -> bool:
    with warnings.catch_warnings():  # a missing driver warns on stderr: the refusal must stay one line
        warnings.simplefilter("ignore")
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()


def child_env(smoke: bool) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    if smoke:  # a GPU, if any, stays hidden; Triton kernels run in its interpreter (set before triton's import)
        env.update(CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    return env


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args._child:
        from acceptance.runner import child_main

        return child_main(args._child, args._ctx, args._result)
    if args.smoke_cpu:
        os.environ.update(CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    elif not cuda_available():
        print(REFUSAL, file=sys.stderr)
        return 2
    if args.out is None:
        parser.error("--out DIR is required")

    from acceptance.common import Context
    from acceptance.profiles import PROFILES
    from acceptance.runner import BY_NAME, SECTIONS, run_all, with_dependencies

    profile = PROFILES["smoke" if args.smoke_cpu else "gpu"]
    unknown = sorted(set(args.sections or []) - set(BY_NAME))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {[s.name for s in SECTIONS]}")
    selected = with_dependencies(args.sections or [s.name for s in SECTIONS])
    budgets = dict(profile.budgets)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in profile.budgets or value <= 0:
            parser.error(f"--budget {item}: expected SECTION=SECONDS with SECONDS > 0 and SECTION one of "
                         f"{sorted(profile.budgets)}")
        budgets[name] = value
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    time_limit = args.time_limit or profile.time_limit + (budgets["parallel"] if gpus >= 2 else 0)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="nemo_subnet_acceptance_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    peak = args.peak_flops or (1e12 if args.smoke_cpu else None)  # smoke: a nominal 1 TFLOP/s "peak"
    ctx = Context(out=out, work=work, profile=profile.name, peak_flops=peak)
    print(f"gpu_acceptance: profile {profile.name}, {gpus} GPU(s), limit {time_limit:.0f} s, out {out}, work {work}",
          flush=True)
    try:
        # two sections at a time only in the CPU smoke run: on a GPU they would disturb each other's timings
        return run_all(ctx, budgets=budgets, time_limit=time_limit, selected=selected,
                       child_env=child_env(args.smoke_cpu), jobs=2 if args.smoke_cpu else 1)
    finally:
        if not args.keep_work and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
