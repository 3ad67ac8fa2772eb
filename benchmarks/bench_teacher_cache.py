"""Teacher cache: step time of CE / online KD / cache KD on a student of the real teacher, and bytes per token.

Teacher: a nemo-subnet checkpoint (default the imported SmolLM2-135M, /work/assets/smollm2_ckpt) and its prepared
data. Student: the uniform sub-network of the teacher at ``--budget`` of its parameters (random weights: a step's
time does not depend on them). Every provider runs the training loop's own step (`loop._Step`: megatron's
schedule, DDP, distributed optimizer step) on the same real micro-batches, read each step through the run's
iterator, so the cache provider pays its reads, checksum checks and host-to-device copies:

    ce          no teacher, fused output on (the cache's loss path without the teacher term)
    ce_logits   no teacher, full logits (what distill.fused_output auto picks at these sizes)
    online_kd   the teacher's forward inside every micro-batch (StudentWithTeacher), fused forward-KL KD
    cache_kd    distill.teacher_source: cache, K sampled ids per token (fused_linear_sampled_kd_loss)

Providers run in interleaved rounds; each ratio is the median of per-round ratios (a shared CPU's slow phases
otherwise land on whichever provider runs then). The caches are built first with `build_teacher_cache` (its
tokens/s is reported: the build's cost, paid once per teacher x data x K), one per K of ``--ks``, and their files
give the bytes per token on disk. Target: cache_kd <= 1.10 x ce; <= 128 bytes per token at the default K.

Writes benchmarks/results/teacher_cache_<device>.{csv,md,png}. Run:
    python benchmarks/bench_teacher_cache.py [--teacher DIR --data DIR] [--seq 256 --mbs 2 --nmb 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

import harness

RESULTS = Path(__file__).parent / "results"


def _timed(fn, iters: int) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) per call. On a shared CPU the wall time mostly measures the other
    jobs; the CPU time (all threads) is the work done, so the ratios use it there (wall time on a GPU)."""
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters


def build_caches(args, work: Path) -> dict[int, tuple[Path, float]]:
    """K -> (cache dir, build tokens/s); the method sample, and top-k at K/2 (the same bytes) for the table."""
    from nemo_subnet import config as configs
    from nemo_subnet.teacher_cache.build import build_teacher_cache
    from nemo_subnet.teacher_cache.config import TeacherCacheConfig

    caches = {}
    samples = args.mbs * args.nmb
    for k in args.ks:
        for method in ("sample", "topk"):
            kk = k if method == "sample" else max(1, k // 2)
            config = configs.updated(TeacherCacheConfig(), {
                "out": work / f"{method}{kk}", "teacher": args.teacher, "data.path": args.data,
                "data.seq_length": args.seq, "data.micro_batch_size": args.mbs, "samples": samples, "k": kk,
                "method": method, "progress": False})
            result = build_teacher_cache(config)
            caches[(method, kk)] = (config.out, samples * args.seq / result.seconds)
    return caches


def disk_bytes_per_token(cache: Path, tokens: int) -> float:
    return sum(p.stat().st_size for p in (cache / "segments").iterdir()) / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("/work/assets/smollm2_ckpt"))
    parser.add_argument("--data", type=Path, default=Path("/work/assets/smollm2_data"))
    parser.add_argument("--budget", type=float, default=0.34, help="student parameters / teacher parameters")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--mbs", type=int, default=2)
    parser.add_argument("--nmb", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 12, 32])
    parser.add_argument("--k", type=int, default=12, help="the K the cache_kd provider reads")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from nemo_subnet.checkpointing import load_model, read_model_config
    from nemo_subnet.data import MicroBatchIterator
    from nemo_subnet.plan.models import uniform_subnet
    from nemo_subnet.runtime import init_runtime
    from nemo_subnet.models.counting import count_parameters
    from nemo_subnet.teacher_cache.store import TeacherCache, bytes_per_token, id_dtype_for
    from nemo_subnet.teacher_cache.training import CachedTeacherIterator
    from nemo_subnet.training.config import TrainConfig
    from nemo_subnet.training.loop import _build_student, _data_config, _Step
    from nemo_subnet.training.output_layer import logits_output
    from nemo_subnet.training.teacher import StudentWithTeacher

    work = Path(tempfile.mkdtemp(prefix="bench_teacher_cache_"))
    caches = build_caches(args, work)
    runtime = init_runtime(tp=1, pp=1, seed=1234)
    teacher_cfg = read_model_config(args.teacher)
    student_cfg = uniform_subnet(teacher_cfg, args.budget * count_parameters(teacher_cfg))
    base = {"init": {"random": "unused.yaml"}, "data": {"path": str(args.data), "seq_length": args.seq,
            "micro_batch_size": args.mbs, "global_batch_size": args.mbs * args.nmb},
            "schedule": {"train_steps": 1}, "logging": {"progress": False, "tensorboard": False}}
    kd = {"teacher": str(args.teacher), "alpha_ce": 0.5, "beta_kd": 0.5, "fused_output": "on"}
    configs = {
        "ce": TrainConfig.from_dict({**base, "distill": {"fused_output": "on"}}),
        "ce_logits": TrainConfig.from_dict({**base, "distill": {"fused_output": "off"}}),
        "online_kd": TrainConfig.from_dict({**base, "distill": kd}),
        "cache_kd": TrainConfig.from_dict({**base, "distill": {**kd, "teacher_source": "cache",
                                                              "cache": str(caches[("sample", args.k)][0])}}),
    }
    dtype = configs["ce"].parallel.params_dtype()
    model, ddp, optimizer, _ = _build_student(configs["ce"], student_cfg, dtype)
    _, teacher = load_model(args.teacher, params_dtype=dtype)
    cache = TeacherCache(configs["cache_kd"].distill.cache)
    from nemo_subnet.data import build_gpt_datasets

    train = build_gpt_datasets(_data_config(configs["ce"], student_cfg), cache.provenance.dataset_samples).train
    steppers = {"ce_logits": _Step(configs["ce_logits"], student_cfg, ddp, None),  # before any deferral
                "ce": _Step(configs["ce"], student_cfg, ddp, None),
                "online_kd": _Step(configs["online_kd"], student_cfg, ddp,
                                   StudentWithTeacher(ddp, teacher, student_cfg.hidden_size, teacher_cfg.hidden_size)),
                "cache_kd": _Step(configs["cache_kd"], student_cfg, ddp, None, cache)}

    def provider(name):
        def step():
            rows = MicroBatchIterator(train, args.mbs)  # the same samples every step, read like a run reads them
            if name == "cache_kd":
                rows = CachedTeacherIterator(rows, cache, args.mbs * args.nmb)
            batches = [{k: v.to(runtime.device) for k, v in next(rows).items()} for _ in range(args.nmb)]
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            if name == "ce_logits":
                with logits_output(ddp):
                    steppers[name].run(batches, forward_only=False, with_teacher=False)
            else:
                steppers[name].run(batches, forward_only=False, with_teacher=name == "online_kd")
            optimizer.step()
        return step

    names = list(steppers)
    walls, cpus = {name: [] for name in names}, {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            wall, cpu = _timed(provider(name), args.iters)
            walls[name].append(wall)
            cpus[name].append(cpu)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {walls[n][-1]:.2f} s ({cpus[n][-1]:.2f} s CPU)"
                                                           for n in names), flush=True)
    rounds = walls if torch.cuda.is_available() else cpus  # what the ratios are of
    seconds = {name: statistics.median(t) for name, t in rounds.items()}
    wall_seconds = {name: statistics.median(t) for name, t in walls.items()}
    ratios = {name: statistics.median(t / c for t, c in zip(rounds[name], rounds["ce"])) for name in names}
    report(args, runtime.device, teacher_cfg, student_cfg, seconds, wall_seconds, ratios, caches, bytes_per_token,
           id_dtype_for)


def report(args, device, teacher_cfg, student_cfg, seconds, wall_seconds, ratios, caches, bytes_per_token,
           id_dtype_for) -> None:
    from nemo_subnet.models.counting import count_parameters

    commit, dev = harness.git_commit(), harness.device_name(device)
    tokens = args.mbs * args.nmb * args.seq
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"teacher_cache_{dev}"
    id_dtype = id_dtype_for(teacher_cfg.padded_vocab_size)
    clock = "wall" if torch.cuda.is_available() else "cpu"
    rows = [dict(kind="step", name=n, k=args.k if n == "cache_kd" else "", clock=clock, seconds=f"{s:.4f}",
                 wall_seconds=f"{wall_seconds[n]:.4f}", tokens_per_s=f"{tokens / s:.0f}", ratio_to_ce=f"{ratios[n]:.3f}")
            for n, s in seconds.items()]
    rows += [dict(kind="cache", name=method, k=k, bytes_per_token=bytes_per_token(method, k, id_dtype),
                  disk_bytes_per_token=f"{_disk(path, args):.2f}", build_tokens_per_s=f"{rate:.0f}")
             for (method, k), (path, rate) in sorted(caches.items())]
    fields = ["date", "device", "commit", "student_params", "seq", "tokens_per_step", "kind", "name", "k", "clock",
              "seconds", "wall_seconds", "tokens_per_s", "ratio_to_ce", "bytes_per_token", "disk_bytes_per_token", "build_tokens_per_s"]
    new = not stem.with_suffix(".csv").exists()
    with stem.with_suffix(".csv").open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({"date": time.strftime("%Y-%m-%d"), "device": dev, "commit": commit, "seq": args.seq,
                             "student_params": count_parameters(student_cfg), "tokens_per_step": tokens, **row})
    lines = [f"# Teacher cache on {dev} ({commit})", "",
             f"Teacher {args.teacher} ({count_parameters(teacher_cfg) / 1e6:.1f}M), student: its uniform sub-network at "
             f"{args.budget:g} ({count_parameters(student_cfg) / 1e6:.1f}M, random weights), seq {args.seq}, "
             f"{args.nmb} x {args.mbs} samples per step ({tokens} tokens), median of {args.rounds} interleaved rounds of "
             f"{args.iters} steps; {torch.get_num_threads()} threads on a shared machine: s / step, tokens/s and the "
             f"ratio are {clock} time (CPU: the process's CPU seconds, all threads; wall time beside).", "",
             f"| step | s / step ({clock}) | wall s / step | tokens/s | / ce |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']}{' K=' + str(r['k']) if r['k'] else ''} | {r['seconds']} | {r['wall_seconds']} | "
              f"{r['tokens_per_s']} | {r['ratio_to_ce']} |" for r in rows if r["kind"] == "step"]
    lines += ["", "| cache | K | bytes / token | on disk | build tokens/s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['k']} | {r['bytes_per_token']} | {r['disk_bytes_per_token']} | "
              f"{r['build_tokens_per_s']} |" for r in rows if r["kind"] == "cache"]
    harness.write_markdown(stem.with_suffix(".md"), lines)
    _plot(stem.with_suffix(".png"), seconds, ratios, rows, dev)


def _disk(path: Path, args) -> float:
    return disk_bytes_per_token(path, args.mbs * args.nmb * args.seq)


def _plot(path: Path, seconds: dict, ratios: dict, rows: list[dict], dev: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(seconds)
    left.bar(names, [seconds[n] for n in names], color=["tab:blue", "tab:cyan", "tab:orange", "tab:green"])
    left.axhline(1.1 * seconds["ce"], color="red", linestyle="--", linewidth=1, label="target: 1.10 x ce")
    for i, n in enumerate(names):
        left.text(i, seconds[n], f"{ratios[n]:.2f}x", ha="center", va="bottom", fontsize=8)
    left.set_ylabel("s / step (CPU time)" if not torch.cuda.is_available() else "s / step")
    left.legend(fontsize=8)
    cache = [r for r in rows if r["kind"] == "cache"]
    right.bar([f"{r['name']}\nK={r['k']}" for r in cache], [r["bytes_per_token"] for r in cache], color="tab:green")
    right.axhline(128, color="red", linestyle="--", linewidth=1, label="target: 128 B at the default K")
    right.set_ylabel("bytes / token")
    right.legend(fontsize=8)
    fig.suptitle(f"teacher cache ({dev})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
