"""Compile table of the Triton KD kernels for sm_90 and sm_100 (no GPU needed).

Every kernel variant the ops launch (traced from the ops themselves, see tests/kernels/triton_aot.py) is
compiled with `triton.compile` for each target, and its resource usage read back: registers per thread,
spill stores / loads, stack and Triton's shared memory. Writes
    benchmarks/results/triton_compile.csv   one row per variant x arch (with Triton version and commit)
    benchmarks/results/triton_compile.md    a summary per kernel variant and the full table

    python benchmarks/triton_compile.py [--subset all|default] [--jobs 2]

Run it without TRITON_INTERPRET=1 (the interpreter replaces the kernels that are to be compiled).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "kernels"))  # the AOT helper shared with the test
import triton_aot  # noqa: E402
from harness import git_commit  # noqa: E402

from nemo_subnet.files import write_csv_atomic, write_text_atomic  # noqa: E402

RESULTS = HERE / "results"
COLUMNS = ["variant", "kernel", "arch", "dtype", "n_cols", "n_valid_mod16", "num_warps", "block_v", "registers",
           "spill_stores", "spill_loads", "stack", "shared", "compile_s", "cached", "uses", "triton", "commit"]


def _summary(rows: list[dict]) -> str:
    """One line per (kernel variant, arch, dtype): register range over the row lengths, worst spill."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["variant"], r["arch"], r["dtype"])].append(r)
    lines = ["| variant | arch | dtype | row-length cases | warps x BLOCK_V | registers (min-max) | "
             "registers, n_valid % 16 == 0 | registers, n_valid odd | max spill st/ld (B) | smem (B) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (variant, arch, dtype), group in sorted(groups.items()):
        regs = [r["registers"] for r in group]
        even = [r["registers"] for r in group if r["n_valid_mod16"] == 0]
        odd = [r["registers"] for r in group if r["n_valid_mod16"] != 0]
        configs = sorted({f"{r['num_warps']}x{r['block_v']}" for r in group})
        lines.append(
            f"| {variant} | {arch} | {dtype} | {len(group)} | {', '.join(configs)} | {min(regs)}-{max(regs)} "
            f"| {max(even) if even else '-'} | {max(odd) if odd else '-'} "
            f"| {max(r['spill_stores'] for r in group)}/{max(r['spill_loads'] for r in group)} "
            f"| {max(r['shared'] for r in group)} |")
    return "\n".join(lines)


def _markdown(rows: list[dict], meta: dict) -> str:
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    per_arch = defaultdict(int)
    for r in rows:
        per_arch[r["arch"]] += 1
    worst = max(rows, key=lambda r: r["registers"])
    spill_lines = "\n".join(
        f"- {r['variant']} {r['arch']} {r['dtype']} V={r['n_cols']}: {r['spill_stores']} B stored / "
        f"{r['spill_loads']} B loaded, {r['registers']} registers" for r in spilled) or "- none"
    return f"""# Triton KD kernels: AOT compile table

{meta['date']}, commit {meta['commit']}, Triton {meta['triton']}; subset `{meta['subset']}`; no GPU used
(`triton.compile` for `GPUTarget("cuda", 90|100, 32)`; registers from the cubin, spills from `ptxas -v`).
Wall time {meta['wall_s']:.0f} s with {meta['jobs']} compile jobs ({meta['cached']} of {len(rows)} rows from the cache).

- {len(rows)} compiled variants: {', '.join(f'{n} for {a}' for a, n in sorted(per_arch.items()))}; compile errors: {sum(bool(r["error"]) for r in rows)}.
- Most registers: {worst['registers']} ({worst['variant']}, {worst['arch']}, {worst['dtype']}, V={worst['n_cols']}).
- Spill limit of the test: {triton_aot.SPILL_LIMIT_BYTES} B each way per variant. Variants that spill at all:
{spill_lines}

How to read it: one kernel variant is one (kernel, constexprs, argument specialisation) that Triton
compiles separately. `n_valid % 16` is the true vocabulary columns of the row modulo 16: when it is not 0
(Pythia's 50277, Qwen2.5's 151665) Triton cannot prove the column mask constant over 16 lanes and loads
element by element instead of in 16-byte vectors, which costs registers (and bandwidth). Row lengths are
Pythia 50304, Llama-3 128256, Qwen2.5 151936 and TP-8 shards of 151936 / 128256 (ranks 0 and 7).

## Summary per kernel variant

{_summary(rows)}

## Every variant

{triton_aot.format_table(rows)}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Compile table of the Triton KD kernels (sm_90, sm_100)")
    parser.add_argument("--subset", default="all", choices=["all", "default"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels that are to be compiled")
    reason = triton_aot.missing_tools()
    if reason:
        parser.error(reason)
    import triton

    start = time.perf_counter()
    rows = triton_aot.compile_all(triton_aot.plan(**triton_aot.subset(args.subset)), args.jobs)
    failed = [r for r in rows if r["error"]]
    for r in failed:
        print(f"COMPILE ERROR {r['variant']} {r['arch']} {r['dtype']} V={r['n_cols']}: {r['error']}", file=sys.stderr)
    meta = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), commit=git_commit(), triton=triton.__version__,
                subset=args.subset, jobs=args.jobs, wall_s=time.perf_counter() - start,
                cached=sum(r["cached"] for r in rows))
    for r in rows:
        r.update(triton=meta["triton"], commit=meta["commit"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "triton_compile.csv", COLUMNS, rows)
    if not failed:
        write_text_atomic(out / "triton_compile.md", _markdown(rows, meta))
    print(_summary(rows) if not failed else "")
    print(f"{len(rows)} rows -> {out / 'triton_compile.csv'} ({meta['wall_s']:.0f} s, {len(failed)} errors)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
