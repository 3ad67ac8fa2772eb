"""Per-GPU memory of a KD (or plain) training step: what the caching allocator is asked for, by phase.

Method (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"): count the
tensors autograd keeps for backward, per token and layer, for *this* code base's layers — Megatron's local
spec with SDPA core attention (flash: no ``[s, s]`` scores), no dropout (p = 0 keeps no masks), RoPE on q
and k, and the gated or plain MLP. Per token of one layer, in elements of the activation dtype:

    residual side   sequential: ln1 in, ln1 out, ln2 in, ln2 out = 4h     parallel residual: x, ln1, ln2 = 3h
    attention       qkv (H + 2G)d (kept whole: v is a view of it), q and k after RoPE Hd + Gd, SDPA output
                    Hd (the context linear_proj saves is a view of it) + an fp32 logsumexp per head
    MLP             gated: fc1 out 2F, ``x_linear + glu_linear_offset`` F, act out F, product F = 5F
                    plain: fc1 (+bias) F, act out F = 2F
    RoPE            fp32 cos and sin for q and for k: 4 x rot_dim floats per position (not per sample)

On the CPU backend torch's RMSNorm is composite and also keeps the fp32 normalised input (h per norm);
CUDA's fused RMSNorm keeps the input and rstd only.

Attention and MLP terms are split over TP; the residual side too with sequence parallelism. Selective
recompute (Megatron's ``mlp`` module, models/execution.py) drops the MLP terms (its input, ln2's output, is
kept anyway); full recompute keeps one ``h`` per
block of ``recompute_num_layers`` layers and recomputes one block at a time in backward. In 1F1B the first
stage holds ``min(pp, microbatches)`` micro-batches in flight, the last one.

Around the loss, the ``[N, V/tp]`` buffers (N = micro-batch tokens) are counted by phase, as the code
holds them: the teacher's logits; the student's logits and their ``[b, s]``-major copy; the logging CE's
copies (alpha_ce = 0); top-k: (values, ids) [N, k] instead of the teacher's logits; the KD kernel's temporaries (Triton: none in forward, the gradient in backward;
the CPU torch mirrors: 20-24 bytes per element, TORCH_KD_*); the output layer's backward (gradient, its contiguous copy,
the weight gradient). The fused-output path replaces all of them by ``C x V/tp`` chunk buffers, the student's
``grad_hidden`` and fp32 ``grad_weight`` (scaled into the weight's dtype in backward) and the teacher's final
hidden states; from a teacher cache, by one chunk buffer and the micro-batch's cached ids [N, K] (no teacher at
all: plan/cache.py).

State: weights in the parameter dtype, fp32 gradient buffers (megatron DDP ``grad_reduce_in_fp32``),
Adam moments (+ fp32 master weights in bf16), sharded over DP by the distributed optimizer; torch's
foreach Adam adds one fp32 temporary per parameter in its step (TE / apex fused Adam: none). The teacher
holds its weights only (no grads, no optimizer) and, under ``no_grad``, one layer's intermediates at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import layer_parameters, norm_parameters

DTYPE_BYTES = {"bf16": 2, "fp32": 4}
FP32 = 4
LINEAR_GRAD_BLOCK = 1 << 25
"""= ``kernels/_linear_grads.BLOCK_ELEMENTS``: elements of one transient block of the fused op's gradients."""
# CPU torch mirrors of the KD row kernels (kernels/_rowwise.py), bytes per [N, V] element alive at once
# beyond the two logits inputs (fp32 inputs; counted from the code and seen by torch.profiler):
# stats pass: x, y, P, y - x (4 x fp32) + isfinite's abs (fp32) and three bool masks = 23;
# gradient pass: out, lq, q, lp, exp(lp) = 5 x fp32 = 20, + exp(s - lse) with CE = 24
TORCH_KD_FWD_BYTES = 23
TORCH_KD_BWD_BYTES = 20
TORCH_KD_BWD_CE_BYTES = 24
# the same for the sparse top-k loss on logits (kernels/vocab_parallel_topk_kd_loss.py; student row only)
TORCH_TOPK_FWD_BYTES = 8
TORCH_TOPK_BWD_BYTES = 12
TORCH_TOPK_BWD_CE_BYTES = 20


@dataclass(frozen=True)
class PlanOptions:
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    tp: int = 1
    pp: int = 1
    dp: int = 1
    precision: Literal["bf16", "fp32"] = "bf16"
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_num_layers: int = 1
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    fused_output: bool = False
    """Fused linear + KD loss (``distill.fused_output``): no [N, V/tp] logits, chunked instead."""
    chunk_size: int | None = None
    """Tokens per chunk of the fused path (default: the kernel's, about 2^27 / (V/tp) logits)."""
    top_k: int | None = None
    alpha_ce: float = 0.0
    backend: Literal["cuda", "cpu"] = "cuda"
    """Implementations: cuda = Triton KD kernels and fused norms; cpu = their torch mirrors (calibration)."""
    adam: Literal["fused", "foreach"] = "fused"
    """TE / apex fused Adam (GPU clusters), or torch's foreach AdamW (megatron's fallback; CPU)."""
    overlap_grad_reduce: bool = False
    """Time only (parallel.overlap_grad_reduce): the DP gradient reduction hidden behind backward."""
    overlap_param_gather: bool = False
    """Time only (parallel.overlap_param_gather): the distributed optimizer's all-gather hidden."""
    teacher_cache: int | None = None
    """K ids per token read from a teacher cache (distill.teacher_source: cache): plan with teacher None (no teacher
    in the step); the fused path holds the batch's cached ids and one chunk buffer (plan/cache.py)."""
    cache_method: Literal["sample", "topk"] = "sample"
    """The cache's method: topk rows also carry K float16 masses."""

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch."""
        return self.micro_batch_size * self.seq_length


def check_options(opts: PlanOptions, student: ModelConfig, teacher: ModelConfig | None) -> None:
    """Raise ValueError naming the first input that cannot be planned."""
    for name in ("seq_length", "micro_batch_size", "global_batch_size", "tp", "pp", "dp", "recompute_num_layers"):
        if getattr(opts, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(opts, name)}")
    if opts.precision not in DTYPE_BYTES:
        raise ValueError(f"precision {opts.precision!r} is not one of {', '.join(DTYPE_BYTES)}")
    if opts.recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute {opts.recompute!r} is not one of none, selective, full")
    if opts.backend not in ("cuda", "cpu") or opts.adam not in ("fused", "foreach"):
        raise ValueError("backend must be cuda or cpu, adam fused or foreach")
    if opts.global_batch_size % (opts.micro_batch_size * opts.dp):
        raise ValueError(f"global_batch_size {opts.global_batch_size} is not a multiple of micro_batch_size * dp = "
                         f"{opts.micro_batch_size} * {opts.dp}")
    if opts.sequence_parallel and opts.tp < 2:
        raise ValueError("sequence_parallel needs tp > 1")
    if opts.top_k is not None and opts.top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {opts.top_k}")
    if opts.teacher_cache is not None and (opts.teacher_cache < 1 or teacher is not None or not opts.fused_output
                                           or opts.top_k is not None):
        raise ValueError("teacher_cache needs K >= 1, the fused output, no top_k, and no teacher in the step")
    if opts.chunk_size is not None and opts.chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {opts.chunk_size}")
    for name, cfg in (("student", student), ("teacher", teacher)):
        if cfg is None:
            continue
        try:
            cfg.check_parallel(opts.tp, opts.pp)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        if opts.seq_length > cfg.max_position_embeddings:
            raise ValueError(f"{name}: seq_length {opts.seq_length} is longer than its position limit "
                             f"{cfg.max_position_embeddings}")
    layers_per_stage = student.num_layers // opts.pp
    if opts.recompute == "full" and layers_per_stage % opts.recompute_num_layers:
        raise ValueError(f"recompute_num_layers {opts.recompute_num_layers} does not divide the student's "
                         f"{layers_per_stage} layers per pipeline stage")
    if teacher is not None and teacher.padded_vocab_size != student.padded_vocab_size:
        raise ValueError(f"vocab mismatch: teacher padded vocab {teacher.padded_vocab_size} != student "
                         f"{student.padded_vocab_size}; distillation needs the same tokenizer")


# ------------------------------------------------------------------------------------------ parameters
def stage_layers(cfg: ModelConfig, pp: int, stage: int) -> range:
    per_stage = cfg.num_layers // pp
    return range(stage * per_stage, (stage + 1) * per_stage)


def stage_parameters(cfg: ModelConfig, tp: int, pp: int, stage: int) -> int:
    """Parameters held by one rank of pipeline stage ``stage``: its layers, the embedding on the first stage,
    the final norm and output layer on the last (a tied output at pp > 1 is a second copy there, as
    Megatron keeps it)."""
    vocab_shard = cfg.padded_vocab_size * cfg.hidden_size // tp
    total = sum(layer_parameters(cfg, i, tp) for i in stage_layers(cfg, pp, stage))
    if stage == 0:
        total += vocab_shard
    if stage == pp - 1:
        total += norm_parameters(cfg, cfg.hidden_size)
        if not cfg.tie_embeddings or pp > 1:
            total += vocab_shard
    return total


# ----------------------------------------------------------------------------------------- activations
def _norm_stats(cfg: ModelConfig, opts: PlanOptions) -> int:
    """Bytes per token a norm saves besides its input: rstd (and mean for LayerNorm) in fp32; the CPU's
    composite RMSNorm also its fp32 normalised input."""
    if cfg.normalization == "LayerNorm":
        return 2 * FP32
    return FP32 + (cfg.hidden_size * FP32 if opts.backend == "cpu" else 0)


def rope_bytes_per_position(cfg: ModelConfig) -> float:
    """Per layer: fp32 cos and sin for q and k, [s, 1, 1, rot_dim] each (shared by the micro-batch's samples)."""
    return 4 * cfg.kv_channels * cfg.rotary_percent * FP32


def layer_activation_bytes(cfg: ModelConfig, layer: int, opts: PlanOptions) -> float:
    """Bytes per token that one student layer keeps for backward (see the module docstring)."""
    e = DTYPE_BYTES[opts.precision]
    h, d = cfg.hidden_size, cfg.kv_channels
    heads, groups, ffn = cfg.layer_sizes(layer)
    sp = opts.tp if opts.sequence_parallel else 1
    residual = (3 if cfg.parallel_residual else 4) * h * e + 2 * _norm_stats(cfg, opts)
    attention = ((heads + 2 * groups) * d + heads * d + groups * d + heads * d) * e + heads * FP32  # + logsumexp
    if cfg.qk_layernorm:
        attention += (heads * d * e if heads != groups else 0) + (heads + groups) * FP32
    mlp = 0 if opts.recompute == "selective" else (5 if cfg.gated_mlp else 2) * ffn * e  # selective: recomputed
    return residual / sp + (attention + mlp) / opts.tp + rope_bytes_per_position(cfg) / opts.micro_batch_size


def stage_activation_bytes(cfg: ModelConfig, opts: PlanOptions, stage: int) -> float:
    """Bytes one micro-batch of this stage keeps until its backward (without the loss buffers)."""
    e = DTYPE_BYTES[opts.precision]
    sp = opts.tp if opts.sequence_parallel else 1
    layers = stage_layers(cfg, opts.pp, stage)
    if opts.recompute == "full":
        per_token = len(layers) // opts.recompute_num_layers * cfg.hidden_size * e / sp  # block inputs
    else:
        per_token = sum(layer_activation_bytes(cfg, i, opts) for i in layers)
    if stage == 0:
        per_token += 8  # token ids kept by the embedding (int64)
    if stage == opts.pp - 1:
        per_token += (cfg.hidden_size * e + _norm_stats(cfg, opts)) / sp + cfg.hidden_size * e  # final norm in, out
    return per_token * opts.tokens


def recompute_block_bytes(cfg: ModelConfig, opts: PlanOptions, stage: int) -> float:
    """Full recompute: one block's activations rebuilt in backward, plus the hidden-state gradients."""
    layers = list(stage_layers(cfg, opts.pp, stage))[: opts.recompute_num_layers]
    per_token = sum(layer_activation_bytes(cfg, i, opts) for i in layers) + 2 * cfg.hidden_size * DTYPE_BYTES[opts.precision]
    return per_token * opts.tokens


def teacher_transient_bytes(cfg: ModelConfig, opts: PlanOptions, stage: int) -> float:
    """The teacher's forward under no_grad: the largest set of one layer's intermediates alive at once."""
    e = DTYPE_BYTES[opts.precision]
    h, d = cfg.hidden_size, cfg.kv_channels
    sp = opts.tp if opts.sequence_parallel else 1
    worst = 0.0
    for i in stage_layers(cfg, opts.pp, stage):
        heads, groups, ffn = cfg.layer_sizes(i)
        attention = ((heads + 2 * groups) * d + 2 * heads * d + groups * d + heads * d) / opts.tp
        mlp = (5 if cfg.gated_mlp else 2) * ffn / opts.tp + h / sp
        worst = max(worst, 2 * h / sp + max(attention, mlp) + (h / sp if cfg.parallel_residual else 0))
    return worst * e * opts.tokens


# -------------------------------------------------------------------------------------------- the plan
@dataclass
class MemoryPlan:
    """Bytes per GPU of the worst pipeline stage at its worst phase, and every phase's total."""

    stage: int
    phase: str
    total: float
    parts: dict[str, float]
    """Named components of ``total`` (weights, grads, optimizer, activations, teacher, KD buffers, ...)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Peak of every phase of that stage (bytes)."""


def _loss_phases(student: ModelConfig, teacher: ModelConfig | None, opts: PlanOptions) -> dict[str, dict[str, float]]:
    """Loss-side buffers of the last stage by phase: {phase: {"teacher": bytes, "kd": bytes}}."""
    e = DTYPE_BYTES[opts.precision]
    n, v, h = opts.tokens, student.padded_vocab_size // opts.tp, student.hidden_size
    nv = n * v
    weight_grad = v * h * e  # autograd's grad of the output weight before DDP's hook adds it to main_grad
    if opts.fused_output:
        from nemo_subnet.kernels.fused_linear_kd_loss import default_chunk_size

        c = min(n, opts.chunk_size or default_chunk_size(n, v))
        held = 0.0 if teacher is None else (n * opts.top_k * (FP32 + 8) if opts.top_k else n * teacher.hidden_size * e)
        buffers = 2  # the student's chunk logits and the teacher's
        if opts.teacher_cache:  # the micro-batch's cached int32 ids (+ float16 masses) on the device; no teacher chunk
            held, buffers = n * opts.teacher_cache * (FP32 + (2 if opts.cache_method == "topk" else 0)), 1
        chunk = c * v * (buffers * e + (TORCH_KD_FWD_BYTES if opts.backend == "cpu" else 0))
        # grad_hidden and grad_weight, formed in forward; grad_weight summed in fp32 from bf16 row blocks of
        # each chunk's product (kernels/_linear_grads.py), scaled and rounded to the weight's dtype in backward
        block = min(v * h, LINEAR_GRAD_BLOCK) * e if e != FP32 else 0.0
        held_grads = n * h * e + v * h * FP32
        scaled = n * h * e + weight_grad + (min(n * h, LINEAR_GRAD_BLOCK) * FP32 if e != FP32 else 0.0)
        return {"loss": {"teacher": held, "kd": chunk + held_grads + block},
                "output backward": {"teacher": 0.0, "kd": held_grads + scaled}}
    phases: dict[str, dict[str, float]] = {}
    t_bytes = 0.0
    if teacher is not None:
        # top-k: only (values in the logits' dtype, int64 ids) [N, k] reach the loss; else the logits shard
        t_bytes = n * opts.top_k * (e + 8) if opts.top_k else nv * e
    phases["student output"] = {"teacher": t_bytes, "kd": 2 * nv * e}  # [s, b, V] and its [b, s, V] copy
    if teacher is None or opts.alpha_ce == 0.0:
        # CE for the logs (or the loss without a teacher): padding-masked copy, then megatron's .float()
        phases["ce"] = {"teacher": t_bytes, "kd": nv * e + nv * e + (nv * FP32 if e != FP32 else 0)}
    if teacher is not None:
        if opts.backend == "cpu" and opts.top_k:
            fwd_temps = nv * TORCH_TOPK_FWD_BYTES
            grad_and_temps = nv * (TORCH_TOPK_BWD_CE_BYTES if opts.alpha_ce else TORCH_TOPK_BWD_BYTES)
        elif opts.backend == "cpu":
            fwd_temps = nv * TORCH_KD_FWD_BYTES
            grad_and_temps = nv * (TORCH_KD_BWD_CE_BYTES if opts.alpha_ce else TORCH_KD_BWD_BYTES)
        else:  # Triton: row statistics only in forward; the gradient (in the logits' dtype) in backward
            fwd_temps, grad_and_temps = 0.0, nv * e
        phases["kd forward"] = {"teacher": t_bytes, "kd": nv * e + fwd_temps}
        phases["kd backward"] = {"teacher": t_bytes, "kd": nv * e + grad_and_temps}
    phases["output backward"] = {"teacher": 0.0, "kd": 2 * nv * e + weight_grad + n * h * e}
    return phases


def plan_memory(student: ModelConfig, teacher: ModelConfig | None, opts: PlanOptions) -> MemoryPlan:
    """The peak over pipeline stages (first and last hold the embedding / loss) and phases."""
    check_options(opts, student, teacher)
    stages = sorted({0, opts.pp - 1})
    return max((_stage_plan(student, teacher, opts, s) for s in stages), key=lambda p: p.total)


def _stage_plan(student: ModelConfig, teacher: ModelConfig | None, opts: PlanOptions, stage: int) -> MemoryPlan:
    e = DTYPE_BYTES[opts.precision]
    params = stage_parameters(student, opts.tp, opts.pp, stage)
    shard = opts.dp if opts.distributed_optimizer else 1
    state = {
        "student weights": params * e,
        "student grads": params * FP32,  # megatron DDP: fp32 main_grad buffers
        "optimizer state": params * (3 if e != FP32 else 2) * FP32 / shard,  # (master,) exp_avg, exp_avg_sq
        "teacher weights": 0.0 if teacher is None else stage_parameters(teacher, opts.tp, opts.pp, stage) * e,
    }
    base = sum(state.values())
    last = stage == opts.pp - 1
    in_flight = 1 if last else min(opts.pp - stage, opts.num_microbatches)
    sp = opts.tp if opts.sequence_parallel else 1
    hidden = student.hidden_size + (teacher.hidden_size if teacher is not None else 0)
    p2p_each = (0 if opts.pp == 1 else (1 if stage in (0, opts.pp - 1) else 2)) * opts.tokens * hidden * e / sp
    acts = stage_activation_bytes(student, opts, stage)
    held = {"student activations": in_flight * acts, "pipeline buffers": in_flight * p2p_each}
    phases: dict[str, dict[str, float]] = {}
    if last:
        for name, loss in _loss_phases(student, teacher, opts).items():
            phases[name] = {**held, "teacher activations": loss["teacher"], "KD buffers / logits": loss["kd"]}
    else:
        phases["forward"] = dict(held)
    if opts.recompute == "full":
        phases["recompute backward"] = {**held, "student activations": held["student activations"]
                                        + recompute_block_bytes(student, opts, stage)}
    if teacher is not None:
        t_out = 2 * opts.tokens * student.padded_vocab_size // opts.tp * e if last and not opts.fused_output else 0.0
        # 1F1B: the micro-batches already in flight keep their activations while the next one's teacher runs
        phases["teacher forward"] = {"student activations": (in_flight - 1) * acts, "pipeline buffers": held["pipeline buffers"],
                                     "teacher activations": teacher_transient_bytes(teacher, opts, stage) + t_out}
    adam_temp = params / shard * FP32 if opts.adam == "foreach" else 0.0
    phases["optimizer step"] = {"optimizer temporaries": adam_temp}
    totals = {name: base + sum(parts.values()) for name, parts in phases.items()}
    worst = max(totals, key=totals.get)
    return MemoryPlan(stage=stage, phase=worst, total=totals[worst], parts={**state, **phases[worst]}, phases=totals)
