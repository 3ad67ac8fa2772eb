"""Sections `kd_step` and `mfu`: what a KD step costs against what it is made of, and the logged MFU.

kd_step (in its own process, the train_resume run's config: same models, micro-batches, dtype, output path)
    times, with CUDA events (benchmarks/harness.py), the training loop's own step (``training.loop._Step`` with
    the optimizer step) three ways, interleaved round by round: the KD step, the student's step without a
    teacher, and the teacher's forward alone (with its logits, which the KD loss forms chunk by chunk).
    Checks: KD step <= ratio_max x (student step + teacher forward); the GEMMs one micro-batch's loss runs
    (training at alpha_ce 0: 4 per chunk for KD + 1 for the logged CE; validation: 1), counted with a torch
    dispatch mode on the real output weights; the FLOPs torch counts in one KD step (FlopCounterMode) against
    the training loop's formula (``3 x student forward + teacher forward``, MFU's numerator).
mfu (in the parent, from the numbers above and the reference run's metrics.jsonl)
    the logged step time (host clock, the training process) against kd_step's CUDA-event time of the same
    step; every logged MFU in (0, 1). Nothing is recomputed from the numbers it is compared with.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .common import progress
from .fixtures import run_config
from .profiles import PROFILES
from .training import WARMUP_STEPS_SKIPPED, max_rel_diff, records

GEMMS = ("mm", "addmm", "addmm_", "matmul", "bmm", "baddbmm")


class _GemmCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in GEMMS
        return func(*args, **(kwargs or {}))


def _batches(vocab: int, t: dict, n: int, device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (t["micro_batch_size"], t["seq_length"] + 1), generator=gen)
        positions = torch.arange(t["seq_length"]).expand(t["micro_batch_size"], -1)
        out.append({"tokens": tokens[:, :-1].contiguous().to(device), "labels": tokens[:, 1:].contiguous().to(device),
                    "loss_mask": torch.ones(t["micro_batch_size"], t["seq_length"], device=device),
                    "position_ids": positions.contiguous().to(device)})
    return out


def _loss_gemms(stepper, student_cfg, teacher_model, t: dict, device, dtype) -> dict:
    """GEMMs of one micro-batch's loss: KD at the run's alpha_ce (0) and validation's CE."""
    from nemo_subnet.kernels import default_chunk_size
    from nemo_subnet.training.distill import LMOutput, lm_loss
    from nemo_subnet.training.output_layer import output_weight

    weight = stepper.ddp.module.shared_embedding_or_output_weight()  # [V, h] (tied or the output layer's)
    with torch.no_grad():  # fill deferred_weight of the teacher with one forward
        teacher_model(torch.zeros(1, 8, dtype=torch.long, device=device), torch.arange(8, device=device)[None], None)
    t_weight = output_weight(teacher_model)
    b, s = t["micro_batch_size"], t["seq_length"]
    from nemo_subnet.runtime import seeded_generator
    gen = seeded_generator(device, 0)
    hidden = torch.randn(b, s, weight.shape[1], device=device, dtype=dtype, generator=gen).requires_grad_()
    t_hidden = torch.randn(b, s, t_weight.shape[1], device=device, dtype=dtype, generator=gen)
    labels = torch.randint(0, student_cfg.vocab_size, (b, s), device=device, generator=gen)
    mask = torch.ones(b, s, device=device)
    distill, weights = stepper.config.distill, stepper.config.loss_weights
    with _GemmCount() as kd:
        lm_loss(LMOutput(hidden, weight), labels, mask, student_cfg.vocab_size, weights, distill,
                LMOutput(t_hidden, t_weight))
    with torch.no_grad(), _GemmCount() as valid:
        lm_loss(LMOutput(hidden, weight), labels, mask, student_cfg.vocab_size, (1.0, 0.0), distill)
    chunks = math.ceil(b * s / default_chunk_size(b * s, weight.shape[0]))
    return {"chunks": chunks, "kd": kd.count, "validation": valid.count, "alpha_ce": weights[0]}


def _counted_flops(stepper, batches) -> tuple[float, bool]:
    """(FLOPs torch counts in one KD step, whether that count includes the core attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        stepper.run([dict(b) for b in batches], forward_only=False, with_teacher=True)
    ops = {str(op) for per_module in counter.get_flop_counts().values() for op in per_module}
    return float(counter.get_total_flops()), any("scaled_dot_product" in op for op in ops)


def run(ctx, rec) -> None:
    from harness import time_calls_ms

    from nemo_subnet.checkpointing import load_model, read_model_config
    from nemo_subnet.models import ModelConfig
    from nemo_subnet.models.counting import attention_flops_per_token, forward_flops_per_token
    from nemo_subnet.runtime import init_runtime
    from nemo_subnet.training.config import TrainConfig
    from nemo_subnet.training.loop import _build_student, _Step
    from nemo_subnet.training.metrics import peak_flops
    from nemo_subnet.training.output_layer import logits_output
    from nemo_subnet.training.teacher import StudentWithTeacher

    profile, t, k = PROFILES[ctx.profile], PROFILES[ctx.profile].train, PROFILES[ctx.profile].kd_step
    config = TrainConfig.from_dict(run_config(profile, ctx.artifacts, ctx.work / "kd_step" / "unused"))
    runtime = init_runtime(tp=1, pp=1, seed=config.seed)
    device, dtype = runtime.device, config.parallel.params_dtype()
    student_cfg = ModelConfig.load(ctx.artifacts["setup.student_yaml"])
    teacher_cfg = read_model_config(ctx.artifacts["setup.teacher"])
    progress(rec.section, f"building the student ({dtype}) and loading the teacher")
    _, ddp, optimizer, _ = _build_student(config, student_cfg, dtype)
    _, teacher = load_model(ctx.artifacts["setup.teacher"], params_dtype=dtype,
                            execution=dataclasses.replace(config.execution, recompute="none"))
    pair = StudentWithTeacher(ddp, teacher, student_cfg.hidden_size, teacher_cfg.hidden_size)
    stepper = _Step(config, student_cfg, ddp, pair)
    rec.number("output_path", stepper.fused_output_line)
    batches = _batches(profile.data["vocab_size"], t, t["global_batch_size"] // t["micro_batch_size"], device)

    def step(with_teacher: bool):
        def run_step():
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            stepper.run([dict(b) for b in batches], forward_only=False, with_teacher=with_teacher)
            optimizer.step()
        return run_step

    @torch.no_grad()
    def teacher_forward():
        with logits_output(teacher):  # the teacher's logits GEMM is part of what KD adds
            for b in batches:
                teacher(b["tokens"], b["position_ids"], attention_mask=None)

    providers = {"kd": step(True), "student": step(False), "teacher_forward": teacher_forward}
    for fn in providers.values():  # warmup: Triton JIT, cuBLAS heuristics, allocator
        time_calls_ms(fn, device, k["warmup"], 0)
    rounds = {name: [] for name in providers}
    progress(rec.section, f"timing {len(providers)} providers x {k['reps']} interleaved rounds")
    for _ in range(k["reps"]):
        for name, fn in providers.items():
            rounds[name] += time_calls_ms(fn, device, 0, 1)
    ms = {name: statistics.median(v) for name, v in rounds.items()}
    ratio = statistics.median(kd / (s + te) for kd, s, te in zip(rounds["kd"], rounds["student"],
                                                                  rounds["teacher_forward"]))
    tokens = t["global_batch_size"] * t["seq_length"]
    rec.number("ms", ms)
    rec.number("kd_over_student_plus_teacher", ratio)
    rec.check(f"KD step <= {k['ratio_max']:g} x (student step + teacher forward)", ratio <= k["ratio_max"],
              f"{ms['kd']:.1f} ms vs {ms['student']:.1f} + {ms['teacher_forward']:.1f} ms: x{ratio:.3f}")
    rec.check(f"target: KD step <= {k['ratio_target']:g} x (student step + teacher forward)",
              ratio <= k["ratio_target"], f"x{ratio:.3f}", required=False)

    if not rec.check("the step takes the fused output path", stepper.fused, stepper.fused_output_line):
        return
    gemms = _loss_gemms(stepper, student_cfg, teacher, t, device, dtype)
    rec.number("loss_gemms_per_micro_batch", gemms)
    want_kd = gemms["chunks"] * (4 + (1 if gemms["alpha_ce"] == 0 else 0))
    rec.check("the KD loss runs 4 GEMMs per chunk (+1 for the logged CE at alpha_ce 0)", gemms["kd"] == want_kd,
              f"{gemms['kd']} GEMMs for {gemms['chunks']} chunk(s), want {want_kd}")
    rec.check("validation's CE runs 1 GEMM per chunk, no gradient", gemms["validation"] == gemms["chunks"],
              f"{gemms['validation']} GEMMs for {gemms['chunks']} chunk(s)")

    counted, with_attention = _counted_flops(stepper, batches)
    counted /= tokens
    formula = 3 * forward_flops_per_token(student_cfg, t["seq_length"]) + forward_flops_per_token(teacher_cfg,
                                                                                                   t["seq_length"])
    compared = formula
    if not with_attention:  # torch has no FLOP formula for the CPU's fused SDPA kernel: compare the matmuls only
        compared -= (3 * attention_flops_per_token(student_cfg, t["seq_length"])
                     + attention_flops_per_token(teacher_cfg, t["seq_length"]))
    rec.number("flops_per_token", {"counted": counted, "formula": formula, "counted_attention": with_attention,
                                   "ratio": counted / compared})
    rec.check("FLOPs counted in a KD step ~ the MFU formula's", 0.9 <= counted / compared <= 1.3,
              f"{counted:.4g} counted vs {compared:.4g} (3 x student + teacher forward"
              f"{'' if with_attention else ', core attention left out: not counted on CPU'}) per token: "
              f"x{counted / compared:.3f} (the logged CE's GEMM and attention backward's recomputation count on top)")
    peak = peak_flops(ctx.peak_flops, dtype)
    rec.number("peak_flops", peak)
    if peak:
        rec.number("measured_mfu", counted * tokens / (ms["kd"] / 1e3) / peak)
    rec.artifact("kd_step.kd_ms", ms["kd"])
    rec.artifact("kd_step.peak_flops", peak)


def mfu(ctx, rec) -> None:
    profile = PROFILES[ctx.profile]
    timed = [r for r in records(Path(ctx.artifacts["train.reference_run"])) if r["step"] > WARMUP_STEPS_SKIPPED]
    step_s = statistics.median(r["step_time_s"] for r in timed)
    rec.number("steps_timed", f"{timed[0]['step']}..{timed[-1]['step']}")
    rec.number("median_step_time_s", step_s)
    rec.number("median_tokens_per_s", statistics.median(r["tokens_per_s"] for r in timed))
    kd_s = ctx.artifacts["kd_step.kd_ms"] / 1e3
    diff = max_rel_diff([step_s], [kd_s])
    rec.check("logged step time ~ kd_step's CUDA-event time of the same step", diff <= profile.timing_rtol,
              f"{step_s * 1e3:.1f} ms logged (host clock, the training process) vs {kd_s * 1e3:.1f} ms (rel diff "
              f"{diff:.2f}, tolerance {profile.timing_rtol:g})")
    if ctx.artifacts.get("kd_step.peak_flops") is None:
        rec.check("MFU known", False, "no peak FLOP/s for this device: pass --peak-flops")
        return
    logged = [r["mfu"] for r in timed]
    rec.check("every step logs an MFU in (0, 1)", all(isinstance(m, float) and 0 < m < 1 for m in logged),
              f"{sum(m is not None for m in logged)} of {len(logged)} steps, range "
              f"{min((m for m in logged if m), default=0):.4f}..{max((m for m in logged if m), default=0):.4f}")
    rec.number("median_mfu", statistics.median(m for m in logged if m is not None) if any(logged) else None)
