"""The teacher cache in a plan: what training from it reads, and the build as its own job.

Training from a cache (``distill.teacher_source: cache``) is planned as a run without a teacher (no teacher
weights, activations, FLOPs or pipeline traffic; memory.py counts the cached ids on the device and one chunk
buffer of the fused loss), plus the cache's read traffic: bytes per token (``store.bytes_per_token``: K ids of
2 or 4 bytes, + K float16 masses for top-k) times the run's tokens per second, to be served by the file system
to every node (a node reads its own DP ranks' rows: tokens per second per node). The loss's own sparse work
([C, K] gathers, scatters and one [C, K] all-reduce per chunk) is not counted: K << V.

The build (``nemo-subnet teacher-cache``) is a forward-only teacher job at its own layout:
    memory per GPU   the teacher stage's weights + one layer's no-grad intermediates (``teacher_transient_bytes``)
                     + in-flight pipeline buffers + on the last stage the chunk buffers of the sampler
                     (logits in the compute dtype + the fp32 CDF: C x V/tp each)
    time per token   forward FLOPs / (GPUs x peak x MFU) + the teacher's 2 TP all-reduces per layer
                     + the 1F1B bubble (pp - 1) / micro-batches of a segment
    output           tokens x bytes per token, written at that rate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import forward_flops_per_token
from nemo_subnet.plan.hardware import GPU
from nemo_subnet.plan.memory import DTYPE_BYTES, FP32, PlanOptions, check_options, stage_parameters, teacher_transient_bytes
from nemo_subnet.teacher_cache.store import bytes_per_token, id_dtype_for


def cache_bytes_per_token(teacher: ModelConfig, k: int, method: str = "sample") -> int:
    return bytes_per_token(method, k, id_dtype_for(teacher.padded_vocab_size))


@dataclass
class CacheBuildPlan:
    memory_bytes: float
    """Peak per GPU (the worse of the first and the last pipeline stage)."""
    parts: dict[str, float]
    tokens_per_s: float
    bytes_per_token: int
    write_bytes_per_s: float
    flops_per_token: float
    mfu: float


def plan_cache_build(teacher: ModelConfig, opts: PlanOptions, device: GPU, *, k: int, method: str = "sample",
                     segment_microbatches: int = 64, mfu: float | None = None, gpus_per_node: int = 8) -> CacheBuildPlan:
    """The build job at ``opts``' layout (tp, pp, dp, micro-batch, precision, sequence parallelism)."""
    from nemo_subnet.kernels.fused_linear_kd_loss import default_chunk_size

    check_options(dataclasses.replace(opts, teacher_cache=None, global_batch_size=opts.micro_batch_size * opts.dp),
                  teacher, None)
    mfu = device.default_mfu if mfu is None else mfu
    e = DTYPE_BYTES[opts.precision]
    sp = opts.tp if opts.sequence_parallel else 1
    worst: dict[str, float] = {}
    for stage in sorted({0, opts.pp - 1}):
        parts = {"teacher weights": stage_parameters(teacher, opts.tp, opts.pp, stage) * e,
                 "teacher activations": teacher_transient_bytes(teacher, opts, stage),
                 "pipeline buffers": 0.0 if opts.pp == 1 else min(opts.pp, segment_microbatches) * opts.tokens
                 * teacher.hidden_size * e / sp}
        if stage == opts.pp - 1:
            v = teacher.padded_vocab_size // opts.tp
            chunk = min(opts.tokens, default_chunk_size(opts.tokens, v))
            parts["sampler buffers"] = chunk * v * (e + FP32) + opts.tokens * teacher.hidden_size * e
        if sum(parts.values()) > sum(worst.values()):
            worst = parts
    world = opts.tp * opts.pp * opts.dp
    flops = forward_flops_per_token(teacher, opts.seq_length)
    per_token = flops / (world * device.peak_flops(opts.precision) * mfu)
    if opts.tp > 1:  # 2 all-reduces of [s, b, h] per layer, ring volume 2 (tp - 1) / tp, over NVLink
        per_token += (2 * teacher.num_layers * teacher.hidden_size * e * 2 * (opts.tp - 1) / opts.tp
                      / device.nvlink_bytes_per_s / (opts.pp * opts.dp))
    per_token *= 1 + (opts.pp - 1) / segment_microbatches  # 1F1B bubble over a segment's micro-batches
    tokens_per_s = 1.0 / per_token
    size = cache_bytes_per_token(teacher, k, method)
    return CacheBuildPlan(memory_bytes=sum(worst.values()), parts=worst, tokens_per_s=tokens_per_s, bytes_per_token=size,
                          write_bytes_per_s=tokens_per_s * size, flops_per_token=flops, mfu=mfu)
