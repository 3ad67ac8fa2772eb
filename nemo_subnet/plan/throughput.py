"""Step time and tokens per second of a KD step on a named GPU, from FLOP counts and stated assumptions.

FLOPs per token: the one counter (``models.counting.forward_flops_per_token``, as training's MFU): the student's
forward x 3 (backward = 2 forwards) + the teacher's forward; full recompute adds one student forward,
selective recompute one MLP forward. Compute time = FLOPs per GPU / (peak x MFU), the MFU an
assumption the plan states (kernel efficiency; communication is added on top). On top:

- tensor-parallel all-reduces (or SP's all-gather + reduce-scatter, the same volume) of ``[s, b, h]`` over
  NVLink, not overlapped (Megatron without TP-comm overlap): per micro-batch and layer 2 in the student's
  forward, 2 in its backward (+2 with full recompute), 2 in the teacher's forward; ring volume
  2 (tp - 1) / tp of the tensor;
- the 1F1B pipeline bubble, (pp - 1) / microbatches of the compute time;
- pipeline p2p transfers, not overlapped (megatron's 1F1B waits on each send/recv; ``overlap_p2p_comm``
  applies to the interleaved schedule only): each micro-batch's stage output crosses a boundary forward and
  its gradient backward, ``[s / sp, b, h_s + h_t]`` in the compute dtype (the teacher's hidden states travel
  with the student's, training/teacher.py), on the critical path m + pp - 1 times each way; over the
  network when the job spans nodes (megatron orders PP outermost, so a stage boundary then crosses nodes),
  else NVLink;
- data-parallel communication of the student's gradients (fp32 reduce-scatter / all-reduce, ring volume
  2 (dp - 1) / dp of the stage's gradient bytes) and, with the distributed optimizer, the all-gather of
  updated parameters; hidden when ``overlap_grad_reduce`` / ``overlap_param_gather`` are on (assumed fully;
  the last bucket is not, in reality), else exposed. DP
  spans nodes when tp x pp x dp exceeds a node: the per-GPU network bandwidth applies, else NVLink.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import forward_flops_per_token, mlp_flops_per_token
from nemo_subnet.plan.hardware import GPU
from nemo_subnet.plan.memory import DTYPE_BYTES, FP32, PlanOptions, stage_parameters


@dataclass
class StepTime:
    step_s: float
    compute_s: float
    bubble_s: float
    exposed_comm_s: float
    """Data-parallel communication not hidden by overlap."""
    tp_comm_s: float
    pp_comm_s: float
    """Pipeline p2p transfers on the critical path (0 at pp = 1)."""
    tokens_per_s: float
    flops_per_token: float
    """Model FLOPs per token (3 x student + teacher forward), as MFU counts them."""
    mfu: float
    """The assumed MFU of the compute part (the step's overall MFU is lower by the bubble and exposed comm)."""


def step_time(student: ModelConfig, teacher: ModelConfig | None, opts: PlanOptions, device: GPU, *,
              mfu: float | None = None, gpus_per_node: int = 8) -> StepTime:
    mfu = device.default_mfu if mfu is None else mfu
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    s = opts.seq_length
    model_flops = 3 * forward_flops_per_token(student, s) + (forward_flops_per_token(teacher, s) if teacher else 0.0)
    hardware_flops = model_flops
    if opts.recompute == "full":
        hardware_flops += forward_flops_per_token(student, s)
    elif opts.recompute == "selective":
        hardware_flops += mlp_flops_per_token(student)
    tokens = opts.global_batch_size * s
    world = opts.tp * opts.pp * opts.dp
    compute = tokens * hardware_flops / world / (device.peak_flops(opts.precision) * mfu)
    bubble = compute * (opts.pp - 1) / opts.num_microbatches
    tp_comm = 0.0
    if opts.tp > 1:
        per_hidden = opts.tokens * DTYPE_BYTES[opts.precision] * 2 * (opts.tp - 1) / opts.tp / device.nvlink_bytes_per_s
        collectives = (4 + (2 if opts.recompute == "full" else 0)) * student.num_layers * student.hidden_size
        if teacher is not None:
            collectives += 2 * teacher.num_layers * teacher.hidden_size
        tp_comm = opts.num_microbatches * per_hidden * collectives / opts.pp
    bandwidth = device.network_bytes_per_s if world > gpus_per_node else device.nvlink_bytes_per_s
    pp_comm = 0.0
    if opts.pp > 1:
        sp = opts.tp if opts.sequence_parallel else 1
        hidden = student.hidden_size + (teacher.hidden_size if teacher is not None else 0)
        transfer = opts.tokens / sp * hidden * DTYPE_BYTES[opts.precision] / bandwidth
        pp_comm = 2 * (opts.num_microbatches + opts.pp - 1) * transfer
    comm = 0.0
    if opts.dp > 1:
        params = max(stage_parameters(student, opts.tp, opts.pp, st) for st in {0, opts.pp - 1})
        ring = (opts.dp - 1) / opts.dp
        grads = 2 * ring * params * FP32 / bandwidth
        gather = ring * params * DTYPE_BYTES[opts.precision] / bandwidth if opts.distributed_optimizer else 0.0
        comm = (0.0 if opts.overlap_grad_reduce else grads) + (0.0 if opts.overlap_param_gather else gather)
    step = compute + tp_comm + bubble + pp_comm + comm
    return StepTime(step_s=step, compute_s=compute, bubble_s=bubble, exposed_comm_s=comm, tp_comm_s=tp_comm,
                    pp_comm_s=pp_comm,
                    tokens_per_s=tokens / step,
                    flops_per_token=model_flops, mfu=mfu)
