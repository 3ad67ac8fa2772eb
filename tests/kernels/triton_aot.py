"""Ahead-of-time compilation of every Triton kernel variant the KD ops launch, for sm_90 / sm_100, on CPU.

How a variant is found (nothing is listed by hand): the public ops (`kd_loss`, `topk_kd_loss`,
`fused_linear_kd_loss`, `fused_linear_sampled_kd_loss` (the teacher cache's loss), and `logit_kd_loss` on a TP shard, the body of `vocab_parallel_kd_loss`) run
forward and backward on *meta* tensors of production shape inside `_row_kernels.recording()`, which
collects the `KernelLaunch`es the launchers build instead of running them. Each launch is then specialised
exactly as Triton's JIT would at launch time (its own binder: int arguments typed i32 / i64 and tagged
divisible-by-16, pointers 16-byte aligned since meta tensors report address 0, which real allocations
and the ops' row slices also are for V a multiple of 8), for the target's backend, and compiled with
`triton.compile`. Identical specialisations (the same stats kernel serves kd_loss and the fused op) are
compiled once and list every op that launches them.

Resource usage: registers from the cubin Triton produced (`cuobjdump -res-usage`); spill stores / loads and
stack from `ptxas -v` rerun on Triton's PTX with Triton's ptxas flags, checked to give the same register
count (if Triton changes its flags the check fails loudly instead of reporting another kernel's numbers).

Rows are cached per variant beside Triton's own cache (see `_cache_path`). Needs triton with its bundled
NVIDIA tools and a process *without* TRITON_INTERPRET=1 (the interpreter replaces `triton.jit` functions).
Run as a script it prints the table and writes JSON:
    python tests/kernels/triton_aot.py --subset all --jobs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

# Triton 3.9 warns once per process that FP fusion defaults to on; the launches use that same default.
warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION is unset")

ARCHS = (90, 100)  # H100 / H200 (sm_90a) and B200 (sm_100a)
H = 4096  # hidden size of the fused op's traced matmuls (meta: free); the row kernels do not depend on it
N_TOKENS = 4096  # rows per traced call; only the grid depends on it
# Spill bytes allowed per variant, each way (stores, loads). Measured (Triton 3.9): 419 of 420 variants spill
# nothing; grad rkl+CE fp32 at a 16032-column shard on sm_90 keeps two loop-invariant scalars in local
# memory (8 B each way, reloaded from L1 once per 4096-column iteration: noise next to the 48 KiB of
# logits that iteration streams). A thread's share of one BLOCK_V tile is 16 values = 64 B in fp32, so
# 32 B still fails as soon as a kernel starts spilling tile data.
SPILL_LIMIT_BYTES = 32


@dataclass(frozen=True)
class VocabCase:
    """One row length the ops meet in training: a full (padded) vocabulary or one TP rank's shard."""

    name: str
    n_cols: int  # columns of the logits on this rank (Megatron's padded vocab / TP)
    vocab_size: int  # true vocabulary (tokenizer); columns >= it are padding
    vocab_start: int = 0  # global id of this rank's first column
    shard: bool = False

    @property
    def n_valid(self) -> int:
        return max(0, min(self.n_cols, self.vocab_size - self.vocab_start))


def _shards(name: str, padded: int, vocab: int, tp: int) -> list[VocabCase]:
    local = padded // tp
    return [VocabCase(f"{name}/tp{tp}-rank{r}", local, vocab, r * local, shard=True) for r in (0, tp - 1)]


VOCAB_CASES = [
    VocabCase("pythia", 50304, 50277),  # 27 padding columns: n_valid not a multiple of 16
    VocabCase("llama3", 128256, 128256),
    VocabCase("qwen2.5", 151936, 151665),
    *_shards("qwen2.5", 151936, 151665, 8),  # rank 7 holds the padding
    *_shards("llama3", 128256, 128256, 8),
]
DTYPES = ("float32", "bfloat16")
# (label, temperature, ce_weight): CE off; CE at T = 1 (shares the student's lse); CE at T != 1 (own lse)
CE_MODES = (("ce=off", 2.0, 0.0), ("ce@T=1", 1.0, 0.3), ("ce@T=2", 2.0, 0.3))


@dataclass(frozen=True)
class Variant:
    """A compile job: what Triton's JIT would compile for one recorded launch on one target."""

    kernel: str
    arch: int
    signature: tuple  # ((name, type), ...)
    constexprs: tuple  # ((path, value), ...)
    attrs: tuple  # ((path, [[attr, value], ...]), ...)
    options: tuple  # ((name, value), ...) CUDAOptions
    dtype: str
    n_cols: int
    n_valid_mod16: int  # what decides the divisibility tag of n_valid

    @property
    def params(self) -> dict:
        names = [name for name, _ in self.signature]
        return {names[path[0]]: value for path, value in self.constexprs}

    @property
    def label(self) -> str:
        p = self.params
        div = {0: "fkl", 1: "rkl", 2: "jsd"}.get(p.get("DIV"), "")
        teacher = "dense" if p.get("HAS_TEACHER") else "topk"
        if self.kernel == "_kd_jsd_kernel":
            return "jsd-pass"
        if self.kernel == "_kd_stats_kernel":
            ce = "ce@own-lse" if p["CE_OWN_LSE"] else ("ce@shared-lse" if p["HAS_CE"] else "ce=off")
            return f"stats {div} {teacher} {ce}"
        return f"grad {div} {teacher} {'ce=on' if p['HAS_CE'] else 'ce=off'}"


# ---------------------------------------------------------------------------------------- tracing
def _traced_calls(case: VocabCase, dtype):
    """(op label, zero-argument call running forward + backward on meta tensors) for every op setting."""
    import torch

    from nemo_subnet.kernels import (Backend, Divergence, Reduction, fused_linear_kd_loss, fused_linear_sampled_kd_loss,
                                     topk_kd_loss)
    from nemo_subnet.kernels.kd_loss import logit_kd_loss

    meta = dict(device="meta", dtype=dtype)
    labels = torch.zeros(N_TOKENS, dtype=torch.int64, device="meta")
    divergences = ((Divergence.FORWARD_KL, "fkl"), (Divergence.REVERSE_KL, "rkl"), (Divergence.JSD, "jsd"))

    def backward(loss, *leaves):
        torch.autograd.grad(loss, leaves)

    for divergence, div in divergences:
        for ce, temperature, ce_weight in CE_MODES:
            common = dict(divergence=divergence, beta=0.5, temperature=temperature, labels=labels,
                          ce_weight=ce_weight, vocab_size=case.vocab_size, backend=Backend.TRITON)

            def logits_op(common=common):
                s = torch.empty(N_TOKENS, case.n_cols, **meta, requires_grad=True)
                t = torch.empty(N_TOKENS, case.n_cols, **meta)
                # vocab_parallel_kd_loss is this call plus its group: collectives do not change the launches
                loss = logit_kd_loss(s, t, scale_t2=True, ignore_index=-100, loss_mask=None,
                                     reduction=Reduction.MEAN, kd_weight=1.0, group=None,
                                     vocab_start_index=case.vocab_start, **common)
                backward(loss, s)

            op = "vocab_parallel_kd_loss" if case.shard else "kd_loss"
            yield f"{op} {div} {ce}", logits_op
            if case.shard:
                continue

            def fused_op(common=common):
                h = torch.empty(N_TOKENS, H, **meta, requires_grad=True)
                w = torch.empty(case.n_cols, H, **meta, requires_grad=True)
                loss = fused_linear_kd_loss(h, w, teacher_hidden=torch.empty(N_TOKENS, H, **meta),
                                            teacher_weight=torch.empty(case.n_cols, H, **meta), **common)
                backward(loss, h, w)

            yield f"fused_linear_kd_loss {div} {ce}", fused_op
    if case.shard:
        return
    for divergence, div in ((Divergence.FORWARD_KL, "fkl"), (Divergence.JSD, "jsd")):
        def topk_op(divergence=divergence):
            s = torch.empty(N_TOKENS, case.n_cols, **meta, requires_grad=True)
            values = torch.empty(N_TOKENS, 64, device="meta", dtype=torch.float32)
            indices = torch.zeros(N_TOKENS, 64, device="meta", dtype=torch.int64)
            loss = topk_kd_loss(s, values, indices, divergence=divergence, beta=0.5, temperature=2.0,
                                vocab_size=case.vocab_size, backend=Backend.TRITON)
            backward(loss, s)

        yield f"topk_kd_loss {div}", topk_op

    for ce, temperature, ce_weight in CE_MODES:
        def sampled_op(temperature=temperature, ce_weight=ce_weight):
            h = torch.empty(N_TOKENS, H, **meta, requires_grad=True)
            w = torch.empty(case.n_cols, H, **meta, requires_grad=True)
            ids = torch.zeros(N_TOKENS, 12, device="meta", dtype=torch.int64)
            loss = fused_linear_sampled_kd_loss(h, w, ids, temperature=temperature, labels=labels, ce_weight=ce_weight,
                                                vocab_size=case.vocab_size, backend=Backend.TRITON)
            backward(loss, h, w)

        yield f"fused_linear_sampled_kd_loss {ce}", sampled_op


def _specialize(launch, arch: int):
    """(options, signature, constexprs, attrs) exactly as `JITFunction.run` derives them for `launch`."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.constexprs, num_warps=launch.num_warps)
    kwargs["debug"] = kernel.debug or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    bound, specialization, options = binder(*launch.args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound, specialization, options)


def plan(cases=VOCAB_CASES, dtypes=DTYPES, archs=ARCHS, only=None) -> dict[Variant, list[str]]:
    """Every distinct variant the ops launch for these cases -> the op settings that launch it.
    `only(case, dtype_name)`, if given, keeps a subset of the case x dtype grid."""
    import torch

    from nemo_subnet.kernels._row_kernels import recording

    variants: dict[Variant, list[str]] = {}
    for case in cases:
        for dtype_name in dtypes:
            if only is not None and not only(case, dtype_name):
                continue
            for op, call in _traced_calls(case, getattr(torch, dtype_name)):
                with recording() as launches:
                    call()
                for launch in launches:
                    for arch in archs:
                        options, signature, constexprs, attrs = _specialize(launch, arch)
                        variant = Variant(
                            launch.name, arch, tuple(signature.items()), tuple(sorted(constexprs.items())),
                            tuple(sorted((k, tuple(map(tuple, v))) for k, v in attrs.items())),
                            tuple(sorted(options.__dict__.items())), dtype_name, case.n_cols, case.n_valid % 16,
                        )
                        uses = variants.setdefault(variant, [])
                        if f"{op} [{case.name}]" not in uses:
                            uses.append(f"{op} [{case.name}]")
    return variants


# -------------------------------------------------------------------------------------- compiling
def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def missing_tools() -> str | None:
    """Why AOT compilation cannot run here (None when it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    for tool in ("ptxas-blackwell", "cuobjdump"):
        if not os.access(_nvidia_tool(tool), os.X_OK):
            return f"triton's bundled {tool} is absent ({_nvidia_tool(tool)})"
    return None


def compile_variant(variant: Variant) -> dict:
    """Compile one variant; registers, spills, shared memory (a dict row; 'error' set on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    from nemo_subnet.kernels import _row_kernels

    p = variant.params
    row = dict(variant=variant.label, kernel=variant.kernel, arch=f"sm_{variant.arch}", dtype=variant.dtype,
               n_cols=variant.n_cols, n_valid_mod16=variant.n_valid_mod16, num_warps=dict(variant.options)["num_warps"],
               block_v=p["BLOCK_V"], registers=None, spill_stores=None, spill_loads=None, stack=None, shared=None,
               compile_s=None, error="")
    kernel = getattr(_row_kernels, variant.kernel)
    start = time.perf_counter()
    try:
        src = ASTSource(kernel, dict(variant.signature), dict(variant.constexprs),
                        {k: [list(a) for a in v] for k, v in variant.attrs})
        compiled = triton.compile(src, target=GPUTarget("cuda", variant.arch, 32), options=dict(variant.options))
        with tempfile.TemporaryDirectory() as tmp:
            ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
            with open(ptx, "w") as f:
                f.write(compiled.asm["ptx"])
            with open(cubin, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage = subprocess.run([_nvidia_tool("cuobjdump"), "-res-usage", cubin], capture_output=True,
                                   text=True, check=True).stdout
            arch = sm_arch_from_capability(variant.arch)
            verbose = subprocess.run(  # Triton's own ptxas flags (backends/nvidia/compiler.py make_cubin)
                [get_ptxas(variant.arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}",
                 ptx, "-o", os.path.join(tmp, "rerun.cubin")], capture_output=True, text=True, check=True,
            ).stderr
        registers = int(re.search(r"REG:(\d+)", usage).group(1))
        stack, stores, loads = map(int, re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", verbose).groups())
        rerun_registers = int(re.search(r"Used (\d+) registers", verbose).group(1))
        if rerun_registers != registers:
            raise RuntimeError(f"ptxas -v rerun used {rerun_registers} registers, Triton's cubin {registers}: "
                               "Triton's ptxas flags changed; update compile_variant")
        row.update(registers=registers, spill_stores=stores, spill_loads=loads, stack=stack,
                   shared=compiled.metadata.shared)
    except Exception as exc:  # reported per variant; the caller fails on any
        row["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
    row["compile_s"] = round(time.perf_counter() - start, 2)
    return row


def _cache_path(variant: Variant) -> str:
    """Where a variant's row is cached: beside Triton's own cache (TRITON_CACHE_DIR), keyed by the kernel's
    source hash (`JITFunction.cache_key`, which covers the jit functions it calls), the specialisation and
    the Triton version, so a cached row is what compiling again would give."""
    import hashlib

    import triton
    from triton import knobs

    from nemo_subnet.kernels import _row_kernels

    key = f"{triton.__version__} {getattr(_row_kernels, variant.kernel).cache_key} {variant!r}"
    return os.path.join(knobs.cache.dir, "nemo_subnet_aot", hashlib.sha256(key.encode()).hexdigest() + ".json")


def _compile_and_store(variant: Variant) -> dict:
    row = compile_variant(variant)
    if not row["error"]:  # failures are compiled (and reported) again every time
        path = _cache_path(variant)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(row, f)
        os.replace(tmp, path)
    return {**row, "cached": False}


def compile_all(variants: dict[Variant, list[str]], jobs: int) -> list[dict]:
    """Rows in plan order, each with the ops that launch it: cached rows as they are, the rest compiled in
    a pool of `jobs` processes."""
    items = list(variants.items())
    rows: list[dict | None] = [None] * len(items)
    missing = []
    for i, (variant, _) in enumerate(items):
        path = _cache_path(variant)
        if os.path.exists(path):
            with open(path) as f:
                rows[i] = {**json.load(f), "cached": True}
        else:
            missing.append(i)
    todo = [items[i][0] for i in missing]
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(_compile_and_store, todo, chunksize=2))
    else:
        done = [_compile_and_store(v) for v in todo]
    for i, row in zip(missing, done):
        rows[i] = row
    for row, (_, uses) in zip(rows, items):
        row["uses"] = "; ".join(uses)
    return rows


def subset(name: str) -> dict:
    """Keyword arguments of `plan` for a named subset. 'default': every kernel x constexpr combination the
    ops launch, once per dtype and mask class, both archs: Llama-3's vocabulary in bf16 (n_valid a multiple
    of 16: vectorised masks) and the padded Qwen2.5 TP-8 shard in fp32 (n_valid odd). 'all': every
    vocabulary case x fp32 / bf16 x both archs."""
    if name == "all":
        return {}
    if name == "default":
        picked = {"llama3": "bfloat16", "qwen2.5/tp8-rank7": "float32"}
        return dict(cases=[c for c in VOCAB_CASES if c.name in picked], dtypes=DTYPES,
                    only=lambda case, dtype: picked[case.name] == dtype)
    raise ValueError(f"unknown subset {name!r}: choose 'default' or 'all'")


def format_table(rows: list[dict]) -> str:
    """Markdown table of the compile results (one line per variant and arch)."""
    head = "| variant | arch | dtype | V (n_cols) | n_valid % 16 | warps | BLOCK_V | regs | spill st/ld (B) | stack (B) | smem (B) | compile (s) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['variant']} | {r['arch']} | {r['dtype']} | {r['n_cols']} | {r['n_valid_mod16']} "
                         f"| {r['num_warps']} | {r['block_v']} | ERROR | | | | {r['compile_s']} |")
            continue
        lines.append(f"| {r['variant']} | {r['arch']} | {r['dtype']} | {r['n_cols']} | {r['n_valid_mod16']} "
                     f"| {r['num_warps']} | {r['block_v']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} "
                     f"| {r['stack']} | {r['shared']} | {r['compile_s']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", default="default", choices=["default", "all"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write the rows here (temporary file, then renamed)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels that are to be compiled")
    reason = missing_tools()
    if reason:
        parser.error(reason)
    start = time.perf_counter()
    variants = plan(**subset(args.subset))
    traced = time.perf_counter() - start
    rows = compile_all(variants, args.jobs)
    print(format_table(rows))
    print(f"{len(rows)} variants traced in {traced:.1f} s, compiled in {time.perf_counter() - start - traced:.1f} s "
          f"({args.jobs} jobs; {sum(r['cached'] for r in rows)} rows from the cache)")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"rows": rows, "trace_s": traced, "total_s": time.perf_counter() - start,
                       "cached": sum(r["cached"] for r in rows)}, f, indent=1)
        os.replace(tmp, args.json)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
