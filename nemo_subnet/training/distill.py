"""Losses on vocabulary-parallel logits, and the frozen teacher that feeds the KD term.

Loss per micro-batch (on the last pipeline stage, every tensor-parallel rank holding a vocab shard):

    loss = alpha_ce * CE(student, labels) + beta_kd * D(teacher || student)

- CE is megatron's ``vocab_parallel_cross_entropy`` with the padding columns (global id >= vocab_size)
  set to -inf first, so padding never takes probability mass.
- D is ``nemo_subnet.kernels.vocab_parallel_kd_loss`` (forward KL / reverse KL / JSD(beta), temperature),
  which excludes padding through its ``vocab_size`` argument and merges row statistics over the TP group.
- top-k teachers: the teacher's global top-k per token is found from each shard's local top-k (all-gathered
  over TP), cached as (values, indices) [b, s, k], and turned back into a dense shard whose off-top-k
  entries sit 1e4 (after temperature) below the row's smallest kept value, so their probability is exactly 0
  in fp32: P is the renormalised top-k distribution, as in ``kernels.topk_kd_loss``.

The teacher runs inside each micro-batch of the student's schedule (teacher.py), so its outputs are
never cached across micro-batches; for top-k KD only its (values, ids) reach the loss.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel

from nemo_subnet.kernels import Reduction, vocab_parallel_kd_loss
from nemo_subnet.training.config import DistillConfig

TOPK_GAP = 1e4
"""Distance (in logits / T) between the teacher's kept top-k values and the rest: exp(-1e4) is 0 in fp32."""


def vocab_shard_start(local_vocab: int) -> int:
    return parallel_state.get_tensor_model_parallel_rank() * local_vocab


def padding_mask(local_vocab: int, vocab_size: int, device) -> torch.Tensor | None:
    """[v_local] True at padding columns of this rank's shard, or None when the shard has none."""
    start = vocab_shard_start(local_vocab)
    if start + local_vocab <= vocab_size:
        return None
    return torch.arange(start, start + local_vocab, device=device) >= vocab_size


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per-token CE [b, s] from vocab-parallel logits [b, s, v_local], padding excluded."""
    pad = padding_mask(logits.shape[-1], vocab_size, logits.device)
    # megatron's CE rewrites its input in place: always hand it a copy (KD keeps the original for backward)
    logits = logits.clone() if pad is None else logits.masked_fill(pad, float("-inf"))
    return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)


def teacher_topk(logits: torch.Tensor, k: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k (values, global ids) [b, s, k] of vocab-parallel logits [b, s, v_local]."""
    local_vocab = logits.shape[-1]
    pad = padding_mask(local_vocab, vocab_size, logits.device)
    if pad is not None:
        logits = logits.masked_fill(pad, float("-inf"))
    values, ids = logits.float().topk(min(k, local_vocab), dim=-1)  # [b, s, k']
    ids = ids + vocab_shard_start(local_vocab)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        values = tensor_parallel.gather_from_tensor_model_parallel_region(values)  # [b, s, k' * tp]
        ids = tensor_parallel.gather_from_tensor_model_parallel_region(ids)
    top, where = values.topk(k, dim=-1)  # [b, s, k]
    return top, ids.gather(-1, where)


def dense_from_topk(values: torch.Tensor, ids: torch.Tensor, local_vocab: int, temperature: float) -> torch.Tensor:
    """This rank's dense teacher shard [b, s, v_local] from a global top-k: off-top-k far below the kept values."""
    start = vocab_shard_start(local_vocab)
    floor = values.min(dim=-1, keepdim=True).values - TOPK_GAP * temperature  # [b, s, 1]
    dense = floor.expand(*values.shape[:-1], local_vocab).clone()  # [b, s, v_local]
    inside = (ids >= start) & (ids < start + local_vocab)
    local_ids = torch.where(inside, ids - start, 0)
    # amax: an out-of-shard entry (clamped to column 0, value `floor`) never overwrites a kept value
    return dense.scatter_reduce(-1, local_ids, torch.where(inside, values, floor.expand_as(values)), reduce="amax")


def lm_loss(student_logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, vocab_size: int,
            weights: tuple[float, float], distill: DistillConfig, teacher=None):
    """(loss, {"loss", "ce", "kd"}) for one micro-batch; ``teacher`` is cached logits or a (values, ids) pair."""
    alpha, beta = weights
    mask = loss_mask.float()
    n_tokens = mask.sum().clamp(min=1.0)
    distilling = teacher is not None and beta != 0.0
    if not distilling or alpha == 0.0:
        # CE is logged even at alpha 0; with KD on it only feeds the logs and runs without autograd
        with torch.set_grad_enabled(torch.is_grad_enabled() and not distilling):
            ce = (cross_entropy(student_logits, labels, vocab_size) * mask).sum() / n_tokens
    if not distilling:
        loss, kd = (ce if teacher is None else alpha * ce), None
    else:
        if isinstance(teacher, tuple):
            teacher = dense_from_topk(*teacher, student_logits.shape[-1], distill.temperature)
        # one pass over the logits for KD and CE; the kernel also returns the CE term for the logs
        out = vocab_parallel_kd_loss(
            student_logits, teacher.to(student_logits.dtype),
            group=parallel_state.get_tensor_model_parallel_group(),
            vocab_start_index=vocab_shard_start(student_logits.shape[-1]),
            divergence=distill.divergence, beta=distill.beta_jsd, temperature=distill.temperature,
            labels=labels if alpha else None, loss_mask=mask, reduction=Reduction.MEAN, vocab_size=vocab_size,
            kd_weight=beta, ce_weight=alpha, return_ce=alpha != 0.0,
        )
        loss, ce = out if alpha else (out, ce)
        kd = (loss.detach() - alpha * ce) / beta
    # copies: megatron's schedule divides the returned loss by num_microbatches in place
    logs = {"loss": loss.detach().float().clone(), "ce": ce.detach().float().clone()}
    if kd is not None:
        logs["kd"] = kd.detach().float().clone()
    return loss, logs
