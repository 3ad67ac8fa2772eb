"""Losses on vocabulary-parallel outputs, and what the loss reads from the frozen teacher.

Loss per micro-batch (on the last pipeline stage, every tensor-parallel rank holding a vocab shard of
Megatron's partition, columns [rank * V/tp, (rank + 1) * V/tp)):

    loss = alpha_ce * CE(student, labels) + beta_kd * D(teacher || student)

A last stage's output (``LMOutput``) is either its logits shard [b, s, V/tp] (``distill.fused_output``
off) or its final hidden states [b, s, h] (after the final norm) with this rank's output-weight shard
[V/tp, h] (fused output on, see output_layer.py): then every op below forms logits chunk by chunk from
the two and never holds [b, s, V/tp] at once; gradients flow to the hidden states (this rank's partial
sum, all-reduced over TP by the output layer's own input-side communication in backward) and to the
weight (the tied embedding's, when tied).

- CE: megatron's ``vocab_parallel_cross_entropy`` with padding columns (global id >= vocab_size) at
  -inf, or ``fused_linear_kd_loss``'s CE-only mode; in the same pass as D when alpha_ce != 0.
- D: ``vocab_parallel_kd_loss`` on logits, or ``fused_linear_kd_loss`` from both hidden states (forward
  KL / reverse KL / JSD(beta), temperature); padding excluded through ``vocab_size``.
- top-k: the teacher's global top-k (values, global ids) [b, s, k] per token from its logits shard or
  its hidden states + weight shard (``vocab_parallel_topk``: each rank's local top-k, all-gathered over
  TP); the loss reads only them (``vocab_parallel_topk_kd_loss`` / ``fused_linear_topk_kd_loss``): P is
  the renormalised top-k distribution and no dense teacher is formed, at any TP.

- cache (``distill.teacher_source: cache``): the teacher's stored K ids per token (``SparseTeacher``); the loss
  is ``fused_linear_sampled_kd_loss``, CE against that sparse target, from hidden states + weight shard only.

The kernels merge row statistics over the TP group, so every rank gets the full-vocabulary loss. The
teacher runs inside each micro-batch of the student's schedule (teacher.py): its outputs are never cached
across micro-batches. At alpha_ce = 0 the logged CE takes one more pass without autograd (on the fused
path: one more chunked forward matmul of the output layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state, tensor_parallel

from nemo_subnet.kernels import (Reduction, default_chunk_size, fused_linear_kd_loss, fused_linear_sampled_kd_loss,
                                 fused_linear_topk_kd_loss, vocab_parallel_kd_loss, vocab_parallel_topk,
                                 vocab_parallel_topk_kd_loss)
from nemo_subnet.training.config import DistillConfig


@dataclass
class LMOutput:
    """A last stage's output as the loss reads it."""

    tensor: torch.Tensor
    """Logits [b, s, v_local]; or, with ``weight``, the final hidden states [b, s, h]."""
    weight: torch.Tensor | None = None
    """This rank's output-weight shard [v_local, h] (fused path), the parameter itself: its grad is the weight's."""

    @property
    def local_vocab(self) -> int:
        return self.tensor.shape[-1] if self.weight is None else self.weight.shape[0]


@dataclass
class SparseTeacher:
    """A teacher read from a cache (``distill.teacher_source: cache``): per token K global ids (+ their masses)."""

    ids: torch.Tensor
    """[b, s, K] sampled draws (mass 1/K each) or top-k ids."""
    probs: torch.Tensor | None = None
    """[b, s, K] the top-k's masses P_T(id); None for draws."""
    tail: bool = False
    """Top-k: 1 - sum(probs) is one more bin, the rest of the vocabulary."""


def fused_output_enabled(setting: str, n_tokens: int, local_vocab: int) -> bool:
    """Resolve ``distill.fused_output`` for micro-batches of ``n_tokens`` (b * s) and a V/tp vocab shard.

    auto: on when the fused op would split the tokens into more than one chunk; with one chunk its logits
    buffer is as large as the logits it replaces, so nothing is saved."""
    if setting == "auto":
        return n_tokens > default_chunk_size(n_tokens, local_vocab)
    if setting not in ("on", "off"):
        raise ValueError(f"fused_output {setting!r} is not one of auto, on, off")
    return setting == "on"


def describe_fused_output(setting: str, n_tokens: int, local_vocab: int) -> str:
    """One line saying which output path a run takes and, for ``auto``, why."""
    enabled = fused_output_enabled(setting, n_tokens, local_vocab)
    path = "on (loss from hidden states, logits chunk by chunk)" if enabled else "off (full logits)"
    if setting != "auto":
        return f"fused output {path}: distill.fused_output is {setting}"
    chunk = default_chunk_size(n_tokens, local_vocab)
    chunks = -(-n_tokens // chunk)
    return (f"fused output {path}: auto, {n_tokens} tokens per micro-batch at V/tp = {local_vocab} make "
            f"{chunks} chunk(s) of {chunk} tokens" + ("" if enabled else "; one chunk would save nothing"))


def vocab_shard_start(local_vocab: int) -> int:
    return parallel_state.get_tensor_model_parallel_rank() * local_vocab


def _tp_args(local_vocab: int) -> dict:
    """The kernels' vocab-parallel arguments for this rank (group None at TP = 1: no collectives)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return {"group": parallel_state.get_tensor_model_parallel_group() if tp > 1 else None,
            "vocab_start_index": vocab_shard_start(local_vocab)}


def padding_mask(local_vocab: int, vocab_size: int, device) -> torch.Tensor | None:
    """[v_local] True at padding columns of this rank's shard, or None when the shard has none."""
    start = vocab_shard_start(local_vocab)
    if start + local_vocab <= vocab_size:
        return None
    return torch.arange(start, start + local_vocab, device=device) >= vocab_size


def cross_entropy(out: LMOutput, labels: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Mean CE over the tokens of ``mask`` [b, s] (fp32 scalar), padding excluded."""
    if out.weight is not None:
        return fused_linear_kd_loss(out.tensor, out.weight, labels=labels, loss_mask=mask, ce_weight=1.0,
                                    vocab_size=vocab_size, reduction=Reduction.MEAN, **_tp_args(out.local_vocab))
    logits = out.tensor
    pad = padding_mask(logits.shape[-1], vocab_size, logits.device)
    # megatron's CE rewrites its input in place: always hand it a copy (KD keeps the original for backward)
    logits = logits.clone() if pad is None else logits.masked_fill(pad, float("-inf"))
    per_token = tensor_parallel.vocab_parallel_cross_entropy(logits, labels)  # [b, s]
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def teacher_topk(out: LMOutput, k: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's global top-k (values, global ids) [b, s, k], the same on every TP rank."""
    source = {"logits_shard": out.tensor} if out.weight is None else {"hidden": out.tensor, "weight": out.weight}
    return vocab_parallel_topk(**source, k=k, vocab_size=vocab_size, **_tp_args(out.local_vocab))


def lm_loss(student: LMOutput, labels: torch.Tensor, loss_mask: torch.Tensor, vocab_size: int,
            weights: tuple[float, float], distill: DistillConfig, teacher=None):
    """(loss, {"loss", "ce", "kd"}) for one micro-batch.

    ``teacher``: None (plain CE), an ``LMOutput`` (dense KD; logits when the student's are, else hidden states
    + weight shard), a top-k (values, ids) pair from ``teacher_topk``, or a ``SparseTeacher`` from a cache."""
    alpha, beta = weights
    mask = loss_mask.float()
    distilling = teacher is not None and beta != 0.0
    if not distilling or alpha == 0.0:
        # CE is logged even at alpha 0; with KD on it only feeds the logs and runs without autograd
        with torch.set_grad_enabled(torch.is_grad_enabled() and not distilling):
            ce = cross_entropy(student, labels, mask, vocab_size)
    if not distilling:
        loss, kd = (ce if teacher is None else alpha * ce), None
    else:
        # one pass over the (chunked) logits for KD and CE; the kernels also return the CE term for the logs
        common = dict(divergence=distill.divergence, beta=distill.beta_jsd, temperature=distill.temperature,
                      labels=labels if alpha else None, loss_mask=mask, reduction=Reduction.MEAN,
                      vocab_size=vocab_size, kd_weight=beta, ce_weight=alpha, return_ce=alpha != 0.0,
                      **_tp_args(student.local_vocab))
        fused = student.weight is not None
        if isinstance(teacher, SparseTeacher):  # from a teacher cache: CE against its sparse target, fused only
            if not fused:
                raise ValueError("a cached teacher needs the fused output (distill.fused_output auto or on)")
            sparse = {key: value for key, value in common.items() if key not in ("divergence", "beta")}
            out = fused_linear_sampled_kd_loss(student.tensor, student.weight, teacher.ids, teacher.probs,
                                               tail=teacher.tail, **sparse)
        elif isinstance(teacher, tuple):  # sparse top-k (values, ids)
            if fused:
                out = fused_linear_topk_kd_loss(student.tensor, student.weight, *teacher, **common)
            else:
                out = vocab_parallel_topk_kd_loss(student.tensor, *teacher, **common)
        elif fused:
            if teacher.weight is None:
                raise ValueError("fused student output needs the teacher's hidden states and weight, got logits")
            out = fused_linear_kd_loss(student.tensor, student.weight, teacher_hidden=teacher.tensor,
                                       teacher_weight=teacher.weight, **common)
        else:
            out = vocab_parallel_kd_loss(student.tensor, teacher.tensor.to(student.tensor.dtype), **common)
        loss, ce = out if alpha else (out, ce)
        kd = (loss.detach() - alpha * ce) / beta
    # copies: megatron's schedule divides the returned loss by num_microbatches in place
    logs = {"loss": loss.detach().float().clone(), "ce": ce.detach().float().clone()}
    if kd is not None:
        logs["kd"] = kd.detach().float().clone()
    return loss, logs
