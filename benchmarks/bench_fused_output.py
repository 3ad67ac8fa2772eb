"""Fused output layer vs materialised logits: peak memory and time of one KD loss step (forward + backward).

Providers (student hidden [N, H] + weight [V, H], teacher hidden [N, H] + weight [V, H], labels; loss =
forward KL + 0.5 CE at T = 1, vocab 27 rows short of V as with Pythia's padding):
    logits_kd     student logits h W^T [N, V] and teacher logits materialised, then `vocab_parallel_kd_loss`
                  (group None: the TP=1 case of the training loss before the fused path)
    fused_kd      `fused_linear_kd_loss` from hidden states and weights, chunked, never [N, V]
    logits_topk   both logits materialised, teacher top-64 by `vocab_parallel_topk`, `vocab_parallel_topk_kd_loss`
    fused_topk    teacher top-64 by `vocab_parallel_topk(hidden=..., weight=...)`, `fused_linear_topk_kd_loss`

Each (case, provider) runs in a fresh subprocess so that nothing from an earlier case is resident.

Peak memory (CPU): the process's resident-set high-water mark during the steps, above the resident set
once the inputs exist — Linux's VmHWM, reset to the current RSS by writing "5" to /proc/self/clear_refs
right before the first step. Large tensors are mmap'ed by glibc and unmapped when freed, so the RSS
follows live tensors; unlike a tensor-storage tracker it also sees kernels' scratch. It includes the
returned grad_weight [V, H] (the same for every provider). On CUDA: max_memory_allocated above the baseline.
Time: median of `--reps` steps after `--warmup` steps (perf_counter; CUDA synchronised). On CPU a step at
these sizes takes minutes (2 cores; bf16 matmuls have no hardware support there), so the CPU grid is run
with `--warmup 0 --reps 1`: each large [N, V] buffer is freshly mapped every step anyway.

    python benchmarks/bench_fused_output.py               # the CPU grid below; CSV / markdown / PNG
    python benchmarks/bench_fused_output.py --quick       # one small case (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nemo_subnet.files import write_text_atomic  # noqa: E402
from harness import Mode, Result, append_rows, device_name, git_commit, plot, row  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PROVIDERS = ("logits_kd", "fused_kd", "logits_topk", "fused_topk")
GRID = [  # (N, H, V): the range of vocabularies, hidden sizes and tokens per micro-batch
    (2048, 768, 50304), (4096, 1024, 50304), (2048, 768, 128256), (4096, 1024, 128256),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOPK = 64
VOCAB_PADDING = 27  # true vocabulary = V - 27 (Pythia: 50277 of 50304)
LOGITS_COPIES = 12  # the logits path's peak on CPU is about this many fp32 [N, V] (torch mirror temporaries)


# ------------------------------------------------------------------------------------------- child
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class _PeakMemory:
    """Peak memory above the level at `start()`: CUDA allocator stats, or the RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS
            self.base = _rss_mb("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        return _rss_mb("VmHWM") - self.base


def _step_fn(provider: str, n: int, h: int, v: int, dtype: torch.dtype, device: torch.device, chunk_size=None):
    from nemo_subnet.kernels import (fused_linear_kd_loss, fused_linear_topk_kd_loss, vocab_parallel_kd_loss,
                                     vocab_parallel_topk, vocab_parallel_topk_kd_loss)

    g = torch.Generator().manual_seed(0)
    vocab = v - VOCAB_PADDING
    hidden = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h**-0.5).to(device=device, dtype=dtype).requires_grad_()
    t_hidden = torch.randn(n, h, generator=g).to(device=device, dtype=dtype)
    t_weight = (torch.randn(v, h, generator=g) * h**-0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, vocab, (n,), generator=g).to(device)
    loss_args = dict(labels=labels, vocab_size=vocab, ce_weight=0.5)
    fused_args = dict(loss_args, chunk_size=chunk_size)  # None: the library default (about 2^27 logits)

    def logits_kd():
        with torch.no_grad():
            teacher = t_hidden @ t_weight.t()  # [n, v]
        return vocab_parallel_kd_loss(hidden @ weight.t(), teacher, group=None, vocab_start_index=0, **loss_args)

    def fused_kd():
        return fused_linear_kd_loss(hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight, **fused_args)

    def logits_topk():
        with torch.no_grad():
            values, ids = vocab_parallel_topk(t_hidden @ t_weight.t(), k=TOPK, vocab_size=vocab)  # [n, k]
        return vocab_parallel_topk_kd_loss(hidden @ weight.t(), values, ids, **loss_args)

    def fused_topk():
        values, ids = vocab_parallel_topk(k=TOPK, hidden=t_hidden, weight=t_weight, vocab_size=vocab,
                                          chunk_size=chunk_size)
        return fused_linear_topk_kd_loss(hidden, weight, values, ids, **fused_args)

    fn = dict(logits_kd=logits_kd, fused_kd=fused_kd, logits_topk=logits_topk, fused_topk=fused_topk)[provider]

    def step() -> float:
        hidden.grad = weight.grad = None
        loss = fn()
        loss.backward()
        return float(loss.detach())

    return step


def child(spec: dict) -> dict:
    """One (case, provider) in this fresh process: {"ms", "peak_mb", "loss"}."""
    device = torch.device(spec["device"])
    step = _step_fn(spec["provider"], spec["N"], spec["H"], spec["V"], DTYPES[spec["dtype"]], device,
                    spec.get("chunk_size"))
    memory = _PeakMemory(device)
    memory.start()
    loss = None
    for _ in range(spec["warmup"]):  # the peak is the max over all steps, warm-up included
        loss = step()
    times = []
    for _ in range(spec["reps"]):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times), "peak_mb": memory.peak_mb(), "loss": loss}


# ------------------------------------------------------------------------------------------ parent
def _available_mb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def _run_child(spec: dict, timeout: float) -> Result:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(float("nan"), float("nan"), note=f"timeout after {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return Result(float("nan"), float("nan"), note=f"exit {proc.returncode}: {tail}")
    out = json.loads(lines[-1])
    return Result(out["ms"], out["peak_mb"], note=f"loss={out['loss']:.6f}")


def write_markdown(csv_path: str, md_path: str, reps: int, warmup: int) -> None:
    """Markdown table of the latest row per (N, H, V, dtype, provider) in the CSV."""
    import csv

    with open(csv_path, newline="") as f:
        latest = {(r["N"], r["H"], r["V"], r["dtype"], r["provider"]): r for r in csv.DictReader(f)}
    order = {p: i for i, p in enumerate(PROVIDERS)}
    rows = sorted(latest.values(), key=lambda r: (r["dtype"], int(r["V"]), int(r["N"]), int(r["H"]),
                                                  order.get(r["provider"].split("/")[0], 99), r["provider"]))
    by_key = latest
    commits = ", ".join(sorted({r["commit"] for r in rows}))
    lines = [f"# Fused output layer vs materialised logits — CPU ({date.today().isoformat()})", "",
             f"`python benchmarks/bench_fused_output.py`, commit {commits}, {torch.get_num_threads()} threads, "
             f"one KD loss step (forward + backward, forward KL + 0.5 CE, top-k = {TOPK}), median of {reps} "
             f"steps after {warmup} warm-up, one fresh process per cell. Peak memory: resident-set high-water mark "
             "above the inputs (VmHWM after /proc/self/clear_refs), grad_weight [V, H] included.", "",
             "| N | H | V | dtype | provider | ms / step | peak MiB | peak vs logits_kd | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = by_key.get((r["N"], r["H"], r["V"], r["dtype"], "logits_kd"))
        ratio = ""
        if base and r["peak_mb"] != "nan" and base["peak_mb"] != "nan" and float(r["peak_mb"]) > 0:
            ratio = f"{float(base['peak_mb']) / float(r['peak_mb']):.1f}x less" if r["provider"] != "logits_kd" else "1"
        lines.append(f"| {r['N']} | {r['H']} | {r['V']} | {r['dtype']} | {r['provider']} | {r['ms']} | "
                     f"{r['peak_mb']} | {ratio} | {r['note']} |")
    write_text_atomic(md_path, "\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="one small case (N 256, H 128, V 8192)")
    parser.add_argument("--cases", help="NxHxV,... instead of the default grid (e.g. 2048x768x50304)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk of the fused providers (default: the "
                        "library's, about 2^27 logits); the provider is then named e.g. fused_kd/c512")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per (case, provider)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "fused_output_cpu"),
                        help="results path without extension (.csv / .md / .png)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    commit = git_commit()
    grid = [(256, 128, 8192)] if args.quick else GRID
    if args.cases:
        grid = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rows = []
    for n, h, v in grid:
        for dtype in args.dtypes.split(","):
            for provider in args.providers.split(","):
                case = {"N": n, "H": h, "V": v, "dtype": DTYPES[dtype]}
                need_mb = LOGITS_COPIES * n * v * 4 / 2**20
                if provider.startswith("logits") and device.type == "cpu" and need_mb > 0.8 * _available_mb():
                    result = Result(float("nan"), float("nan"),
                                    note=f"skipped: needs ~{need_mb / 1024:.0f} GiB, {_available_mb() / 1024:.0f} free")
                else:
                    spec = dict(provider=provider, N=n, H=h, V=v, dtype=dtype, device=str(device), reps=args.reps,
                                warmup=args.warmup, chunk_size=args.chunk_size)
                    result = _run_child(spec, args.timeout)
                name = provider if args.chunk_size is None or provider.startswith("logits") else \
                    f"{provider}/c{args.chunk_size}"
                r = row(device, commit, f"fused_output/{dtype}", name, Mode.FULL, case, result)
                append_rows(args.out + ".csv", [r])  # per cell: a long grid keeps what it measured
                rows.append(r)
                print(f"N={n} H={h} V={v} {dtype:>8} {r['provider']:>15}: {r['ms']:>10} ms  {r['peak_mb']:>8} MiB  "
                      f"{r['note']}", flush=True)
    write_markdown(args.out + ".csv", args.out + ".md", args.reps, args.warmup)
    plot(args.out + ".csv", args.out + ".png", f"fused output vs logits ({device_name(device)})")


if __name__ == "__main__":
    main()
