"""torchrun worker: one KD training step through the fused output equals the logits path, at this layout.

``python fused_output_worker.py --tp T --pp P CASE ...`` (under torchrun, T * P ranks, or one process).
Per case: a tiny random student (and teacher) wrapped in megatron DDP as training builds them
(loop._build_student), two micro-batches through ``loop._Step`` — megatron's schedule, the teacher inside
each micro-batch, ``finalize_model_grads`` (DP reduce, and the tied embedding's all-reduce between the first
and last pipeline stage) — first with ``distill.fused_output: off`` (logits), then ``on`` on the same model
(now deferred: final hidden states out of the last stage). Compared: the step's logged loss / ce / kd, the
validation CE (forward only, no teacher), and every parameter's reduced gradient in megatron's grad buffer
(``main_grad``), the output / tied embedding weight included and required non-zero. The fused op's chunk is
shrunk (``_CHUNK_ELEMENTS``) so a micro-batch spans two chunks (256 + 64 tokens), merged over TP per chunk.
With ``--sequence-parallel`` (TP > 1) both settings are also compared with the logits step of the same
model built without sequence parallelism: norm gradients all-reduced over TP, the sequence all-gathered
before the loss. Prints ``FUSED OK [sp ]<case> rank=<r> max|diff| loss=.. grad=..`` per case.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch

SEQ, MICRO, N_MICRO = 160, 2, 2  # 320 tokens per micro-batch: two chunks of the fused op (256 + 64)
VOCAB = 500  # padded to 512: padding columns on the last TP shard
STUDENT = dict(family="llama", vocab_size=VOCAB, hidden_size=64, num_layers=2, num_attention_heads=4,
               num_query_groups=2, ffn_hidden_size=128, kv_channels=16, max_position_embeddings=256,
               normalization="RMSNorm", norm_eps=1e-5, activation="silu", gated_mlp=True, add_bias_linear=False,
               add_qkv_bias=False)
TEACHER = {**STUDENT, "num_layers": 4, "hidden_size": 96, "ffn_hidden_size": 192, "kv_channels": 24}
CASES = {  # name: (distill options or None for plain CE, student tied embeddings, precision)
    "fkl": (dict(alpha_ce=0.5, beta_kd=0.5, temperature=2.0), False, "fp32"),
    "fkl_tied": (dict(alpha_ce=0.5, beta_kd=0.5, temperature=2.0), True, "fp32"),
    "rkl": (dict(alpha_ce=0.0, beta_kd=1.0, divergence="reverse_kl"), False, "fp32"),
    "topk_jsd": (dict(alpha_ce=0.0, beta_kd=1.0, divergence="jsd", beta_jsd=0.3, top_k=8), False, "fp32"),
    "topk_fkl_ce_tied": (dict(alpha_ce=0.3, beta_kd=0.7, temperature=1.5, top_k=8), True, "fp32"),
    "ce": (None, False, "fp32"),
    "ce_tied": (None, True, "fp32"),
    "fkl_bf16": (dict(alpha_ce=0.5, beta_kd=0.5, temperature=2.0), False, "bf16"),
}
# (rtol of the logged losses, rtol of each gradient relative to its max |g|); measured fp32 diffs are ~1e-7
TOLERANCES = {"fp32": (1e-5, 1e-5), "bf16": (2e-2, 5e-2)}


def _batches(device) -> list[dict]:
    gen = torch.Generator().manual_seed(5)  # the same on every rank
    out = []
    for _ in range(N_MICRO):
        tokens = torch.randint(0, VOCAB, (MICRO, SEQ), generator=gen)
        mask = torch.ones(MICRO, SEQ)
        mask[1, SEQ - 30:] = 0.0
        out.append({"tokens": tokens.to(device), "labels": torch.roll(tokens, -1, dims=1).to(device),
                    "loss_mask": mask.to(device), "position_ids": torch.arange(SEQ).expand(MICRO, SEQ).to(device)})
    return out


def _grads(ddp) -> dict[str, torch.Tensor]:
    return {name: p.main_grad.detach().float().clone() for name, p in ddp.module.named_parameters()}


def _step_results(name: str, runtime, sequence_parallel: bool) -> dict:
    """{fused_output setting: (step logs, validation logs, reduced grads)} for one freshly built model pair."""
    from megatron.core import parallel_state

    from nemo_subnet.kernels import Divergence
    from nemo_subnet.models import ModelConfig, build_gpt_model
    from nemo_subnet.training.config import DataConfig, DistillConfig, ParallelConfig, TrainConfig
    from nemo_subnet.training.loop import _build_student, _Step
    from nemo_subnet.training.output_layer import is_deferred
    from nemo_subnet.training.teacher import StudentWithTeacher

    distill_opts, tied, precision = CASES[name]
    torch.manual_seed(0)  # the same weights with and without sequence parallelism (same shards)
    student_cfg = ModelConfig.from_dict({**STUDENT, "tie_embeddings": tied})
    teacher_cfg = ModelConfig.from_dict(TEACHER)
    data = DataConfig(seq_length=SEQ, micro_batch_size=MICRO, global_batch_size=MICRO * N_MICRO * runtime.dp)
    distill = DistillConfig(**{k: Divergence(v) if k == "divergence" else v for k, v in (distill_opts or {}).items()})
    if distill_opts is not None:
        distill.teacher = Path("in-process-teacher")  # only loss_weights reads it
    config = TrainConfig(data=data, distill=distill, parallel=ParallelConfig(
        tp=runtime.tp, pp=runtime.pp, precision=precision, sequence_parallel=sequence_parallel))
    dtype = config.parallel.params_dtype()
    model, ddp, _, _ = _build_student(config, student_cfg, dtype)
    assert model.config.sequence_parallel == sequence_parallel
    pair = None
    if distill_opts is not None:
        teacher = build_gpt_model(teacher_cfg, params_dtype=dtype, execution=config.execution)
        pair = StudentWithTeacher(ddp, teacher, student_cfg.hidden_size, teacher_cfg.hidden_size)
    batches = _batches(runtime.device)
    results = {}
    for setting in ("off", "on"):
        config.distill.fused_output = setting
        stepper = _Step(config, student_cfg, ddp, pair)
        assert stepper.fused == (setting == "on")
        assert is_deferred(model) == (setting == "on" and parallel_state.is_pipeline_last_stage())
        ddp.zero_grad_buffer()
        logs = stepper.run(batches, forward_only=False, with_teacher=True)
        grads = _grads(ddp)
        ddp.eval()
        with torch.no_grad():
            valid = stepper.run(batches, forward_only=True, with_teacher=False)
        ddp.train()
        results[setting] = (logs, valid, grads)
    return results


def _compare(name: str, got: tuple, want: tuple, precision: str) -> tuple[float, float]:
    """Max |diff| of the logged losses and max |diff| / max |grad| over every parameter."""
    (logs_got, valid_got, g_got), (logs_want, valid_want, g_want) = got, want
    loss_rtol, grad_rtol = TOLERANCES[precision]
    assert logs_got.keys() == logs_want.keys(), (logs_got, logs_want)
    loss_diff = 0.0
    for key in logs_want:
        torch.testing.assert_close(logs_got[key], logs_want[key], rtol=loss_rtol, atol=loss_rtol, msg=f"{name} {key}")
        loss_diff = max(loss_diff, abs(logs_got[key] - logs_want[key]))
    torch.testing.assert_close(valid_got["ce"], valid_want["ce"], rtol=loss_rtol, atol=loss_rtol,
                               msg=f"{name} valid")
    grad_diff = 0.0
    assert g_got.keys() == g_want.keys()
    for param, want_grad in g_want.items():
        scale = float(want_grad.abs().max())
        torch.testing.assert_close(g_got[param], want_grad, rtol=grad_rtol, atol=grad_rtol * scale,
                                   msg=f"{name} {param}")
        grad_diff = max(grad_diff, float((g_got[param] - want_grad).abs().max()) / max(scale, 1e-30))
    for param in ("output_layer.weight", "embedding.word_embeddings.weight"):
        if param in g_got:  # the output weight (or the tied embedding) really gets a gradient
            assert float(g_got[param].abs().max()) > 0, f"{name}: {param} has no gradient"
    return loss_diff, grad_diff


def run_case(name: str, runtime, sequence_parallel: bool = False) -> None:
    """Fused == logits at this layout; with ``sequence_parallel``, both equal the logits step without it
    (norm-weight gradients all-reduced over TP, the output's sequence all-gather and its reduce-scatter)."""
    precision = CASES[name][2]
    results = _step_results(name, runtime, sequence_parallel)
    reference = _step_results(name, runtime, False)["off"] if sequence_parallel else results["off"]
    diffs = [_compare(name, results[setting], reference, precision) for setting in ("off", "on")]
    loss_diff, grad_diff = max(d[0] for d in diffs), max(d[1] for d in diffs)
    tag = "sp " if sequence_parallel else ""
    print(f"FUSED OK {tag}{name} rank={runtime.rank} max|diff| loss={loss_diff:.2e} grad/max|grad|={grad_diff:.2e} "
          f"loss={results['on'][0]['loss']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--sequence-parallel", action="store_true",
                        help="compare against the same step without sequence parallelism too")
    parser.add_argument("cases", nargs="+", choices=sorted(CASES))
    args = parser.parse_args()
    from nemo_subnet.runtime import init_runtime, shutdown_runtime

    # two chunks per micro-batch: default_chunk_size then gives its floor of 256 tokens
    importlib.import_module("nemo_subnet.kernels.fused_linear_kd_loss")._CHUNK_ELEMENTS = 1
    runtime = init_runtime(tp=args.tp, pp=args.pp, seed=1234)
    for name in args.cases:
        run_case(name, runtime, args.sequence_parallel)
    shutdown_runtime()


if __name__ == "__main__":
    main()
