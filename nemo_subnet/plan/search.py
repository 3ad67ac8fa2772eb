"""The cheapest layout that fits a cluster: every TP x PP x DP over all its GPUs and every micro-batch size,
kept when the plan's peak fits the GPU's memory (less a reserve), ranked by tokens per second (at a fixed
cluster size, the fewest GPU-hours per token).

TP stays inside a node (its all-reduces need NVLink) and divides both models' heads, query groups, FFN and
vocabulary; PP divides both models' layers (the teacher runs on the student's stages); DP and the
micro-batch divide the global batch. The memory options (precision, recompute, sequence parallelism,
distributed optimizer, fused output, top-k) are the caller's, unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.plan.hardware import GPU
from nemo_subnet.plan.memory import MemoryPlan, PlanOptions, plan_memory
from nemo_subnet.plan.throughput import StepTime, step_time

RESERVE_BYTES = 2 * 2**30
"""Left free per GPU for the CUDA context, NCCL buffers and allocator fragmentation."""


@dataclass
class Candidate:
    options: PlanOptions
    memory: MemoryPlan
    time: StepTime
    fits: bool


def parse_gpus(text: str) -> tuple[int, int]:
    """``64x8`` (nodes x GPUs per node) or ``8`` (one node) -> (nodes, gpus_per_node)."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers, default=0) < 1:
        raise ValueError(f"--gpus {text!r} is not NODESxGPUS_PER_NODE (e.g. 64x8) or a GPU count on one node")
    return (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(student: ModelConfig, teacher: ModelConfig | None, base: PlanOptions, device: GPU, nodes: int,
               gpus_per_node: int, *, mfu: float | None = None, micro_batch_sizes=(1, 2, 4, 8, 16),
               reserve_bytes: int = RESERVE_BYTES) -> list[Candidate]:
    """Every valid layout of ``nodes x gpus_per_node`` GPUs, fitting ones first, fastest first."""
    world = nodes * gpus_per_node
    out = []
    for tp in _divisors(gpus_per_node):
        for pp in _divisors(world // tp):
            dp = world // (tp * pp)
            for mb in micro_batch_sizes:
                opts = dataclasses.replace(base, tp=tp, pp=pp, dp=dp, micro_batch_size=mb,
                                           sequence_parallel=base.sequence_parallel and tp > 1)
                try:
                    memory = plan_memory(student, teacher, opts)
                except ValueError:
                    continue  # this layout cannot split the models or the batch
                timing = step_time(student, teacher, opts, device, mfu=mfu, gpus_per_node=gpus_per_node)
                out.append(Candidate(opts, memory, timing, memory.total <= device.hbm_bytes - reserve_bytes))
    out.sort(key=lambda c: (not c.fits, -c.time.tokens_per_s, c.options.tp * c.options.pp, c.memory.total))
    return out


def best_layout(student, teacher, base: PlanOptions, device: GPU, nodes: int, gpus_per_node: int, **kwargs) -> Candidate:
    """The fastest fitting layout; ValueError naming the closest miss when none fits."""
    found = candidates(student, teacher, base, device, nodes, gpus_per_node, **kwargs)
    if not found:
        raise ValueError(f"no layout of {nodes}x{gpus_per_node} GPUs splits these models and global batch "
                         f"{base.global_batch_size} (TP must divide heads, groups, FFN and vocabulary; PP the layers)")
    if not found[0].fits:
        closest = min(found, key=lambda c: c.memory.total)
        o = closest.options
        raise ValueError(f"nothing fits {device.name} ({device.hbm_bytes / 2**30:.0f} GiB): the smallest plan, tp={o.tp} "
                         f"pp={o.pp} dp={o.dp} micro-batch {o.micro_batch_size}, needs {closest.memory.total / 2**30:.1f} GiB "
                         "per GPU; try --recompute full, --sequence-parallel, --fused-output or more GPUs")
    return found[0]
