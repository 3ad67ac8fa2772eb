"""KD step cost: student step with and without the teacher, teacher forward alone, and plain megatron GPTModel.

Providers (same DDP + distributed optimizer + schedule, same micro-batches, random tokens):
    megatron_plain  GPTModel with megatron's own local layer spec and loss (labels -> compute_language_model_loss)
    student         our student GPTModel, our CE (padding excluded) — the `nemo-subnet train` step without a teacher
    teacher_fwd     the teacher's forward (no grad) over the step's micro-batches (what KD adds)
    kd              the training loop's KD step: StudentWithTeacher (teacher forward inside each micro-batch)
                    + student step with alpha*CE + beta*KD (forward KL)
Goal: kd <= student + teacher_fwd + 10%.

Appends rows (device, commit, sizes, ms/step, tokens/s) to benchmarks/results/kd_step.csv and writes a bar
plot beside it. Run: ``python benchmarks/bench_kd_step.py [--preset cpu|gpu] [--iters N]``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
PRESETS = {
    # student ~ 1/3 of the teacher's non-embedding size; seq / batch sized to run in about a minute
    "cpu": dict(student=dict(hidden_size=256, num_layers=4, ffn_hidden_size=768), teacher=dict(hidden_size=384, num_layers=8,
                ffn_hidden_size=1152), vocab=8000, seq=256, mbs=4, nmb=2),
    "gpu": dict(student=dict(hidden_size=1024, num_layers=12, ffn_hidden_size=4096), teacher=dict(hidden_size=2048,
                num_layers=24, ffn_hidden_size=8192), vocab=50304, seq=2048, mbs=4, nmb=4),
}


def model_cfg(vocab: int, hidden_size: int, num_layers: int, ffn_hidden_size: int):
    from nemo_subnet.models import ModelConfig

    heads = hidden_size // 64
    return ModelConfig(family="llama", vocab_size=vocab, hidden_size=hidden_size, num_layers=num_layers,
                       num_attention_heads=heads, num_query_groups=heads, ffn_hidden_size=ffn_hidden_size,
                       kv_channels=64, max_position_embeddings=4096, normalization="RMSNorm", norm_eps=1e-5,
                       activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False)


def batches(vocab: int, seq: int, mbs: int, nmb: int, device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(nmb):
        tokens = torch.randint(0, vocab, (mbs, seq + 1), generator=gen)
        out.append({"tokens": tokens[:, :-1].to(device), "labels": tokens[:, 1:].to(device),
                    "loss_mask": torch.ones(mbs, seq, device=device),
                    "position_ids": torch.arange(seq, device=device).expand(mbs, seq).contiguous()})
    return out


def timed(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds of student / teacher_fwd / kd; the ratio is the median of per-round "
                             "ratios (a shared CPU's slow phases otherwise land on whichever provider runs then)")
    args = parser.parse_args()
    p = PRESETS[args.preset]

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_subnet.models import build_gpt_model
    from nemo_subnet.runtime import init_runtime
    from nemo_subnet.training.config import DistillConfig, TrainConfig
    from nemo_subnet.training.loop import _build_student, _Step
    from nemo_subnet.training.teacher import StudentWithTeacher

    runtime = init_runtime(tp=1, pp=1, seed=1234)
    student_cfg = model_cfg(p["vocab"], **p["student"])
    teacher_cfg = model_cfg(p["vocab"], **p["teacher"])
    config = TrainConfig.from_dict({"init": {"random": "unused.yaml"}, "data": {
        "path": ".", "seq_length": p["seq"], "micro_batch_size": p["mbs"], "global_batch_size": p["mbs"] * p["nmb"]},
        "distill": {"teacher": "unused", "alpha_ce": 0.5, "beta_kd": 0.5}})
    dtype = config.parallel.params_dtype()
    data = batches(p["vocab"], p["seq"], p["mbs"], p["nmb"], runtime.device)
    teacher = build_gpt_model(teacher_cfg, params_dtype=dtype)

    def optimizer_step(run):
        def step():
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            run()
            optimizer.step()
        return step

    results = {}
    # plain megatron GPTModel: megatron's local spec, its own loss over the padded vocabulary
    plain = build_gpt_model(student_cfg, params_dtype=dtype, layer_spec=get_gpt_layer_local_spec())
    _, ddp, optimizer, _ = _build_student_from(config, plain)

    def plain_forward_step(data_iterator, model):
        batch = next(data_iterator)
        loss = model(batch["tokens"], batch["position_ids"], attention_mask=None, labels=batch["labels"])  # [b, s]
        return loss, lambda out: ((out * batch["loss_mask"]).sum() / batch["loss_mask"].sum(), {})

    schedule = get_forward_backward_func()
    results["megatron_plain"] = timed(optimizer_step(lambda: schedule(
        forward_step_func=plain_forward_step, data_iterator=iter(data), model=[ddp], num_microbatches=len(data),
        seq_length=p["seq"], micro_batch_size=p["mbs"], forward_only=False)), args.iters)
    del ddp, optimizer, plain

    model, ddp, optimizer, _ = _build_student(config, student_cfg, dtype)
    pair = StudentWithTeacher(ddp, teacher, student_cfg.hidden_size, teacher_cfg.hidden_size)
    stepper = _Step(config, student_cfg, ddp, pair)

    @torch.no_grad()
    def teacher_forward():
        for b in data:
            teacher(b["tokens"], b["position_ids"], attention_mask=None)

    providers = {
        "student": optimizer_step(lambda: stepper.run([dict(b) for b in data], forward_only=False, with_teacher=False)),
        "teacher_fwd": teacher_forward,
        "kd": optimizer_step(lambda: stepper.run([dict(b) for b in data], forward_only=False, with_teacher=True)),
    }
    rounds = {name: [] for name in providers}
    for _ in range(args.rounds):
        for name, fn in providers.items():
            rounds[name].append(timed(fn, args.iters))
    results.update({name: statistics.median(times) for name, times in rounds.items()})
    ratio = statistics.median(k / (s + t) for s, t, k in zip(rounds["student"], rounds["teacher_fwd"], rounds["kd"]))
    report(results, p, args, dtype, ratio)


def _build_student_from(config, model):
    """DDP + optimizer around an already built model (the plain-megatron provider)."""
    from unittest import mock

    from nemo_subnet.training import loop

    with mock.patch.object(loop, "build_gpt_model", lambda *a, **k: model):
        return loop._build_student(config, None, model.config.params_dtype)


def report(results: dict, p: dict, args, dtype, ratio: float) -> None:
    tokens = p["seq"] * p["mbs"] * p["nmb"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    budget = results["student"] + results["teacher_fwd"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "kd_step.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["date", "device", "commit", "preset", "dtype", "tokens_per_step", "provider", "ms_per_step",
                             "tokens_per_s", "kd_over_budget"])
        for name, seconds in results.items():
            writer.writerow([datetime.date.today().isoformat(), device, commit, args.preset, str(dtype).split(".")[-1],
                             tokens, name, f"{seconds * 1e3:.1f}", f"{tokens / seconds:.0f}",
                             f"{ratio:.3f}" if name == "kd" else ""])
    for name, seconds in results.items():
        print(f"{name:>15}: {seconds * 1e3:8.1f} ms/step  {tokens / seconds:9.0f} tokens/s")
    print(f"kd / (student + teacher_fwd) = {ratio:.3f}, median over {args.rounds} interleaved rounds (goal <= 1.10)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(results)
    ax.bar(names, [results[n] * 1e3 for n in names], color=["gray", "tab:blue", "tab:orange", "tab:green"])
    ax.axhline(budget * 1.1e3, color="red", linestyle="--", linewidth=1, label="goal: student + teacher fwd + 10%")
    ax.set_ylabel("ms / step")
    ax.set_title(f"KD step, {args.preset} preset, {device}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"kd_step_{args.preset}.png", dpi=120)


if __name__ == "__main__":
    main()
