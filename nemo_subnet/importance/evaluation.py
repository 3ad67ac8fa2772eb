"""Held-out loss of a (masked) super-network at any TP/PP/DP; a checkpoint loaded as a super-network.

Shared by importance (calibration passes, layer-drop perplexity) and search (the objective).

Data parallelism: every rank reads its own micro-batches (``MicroBatchIterator`` with its DP rank), the
sums of per-token losses and token counts are all-reduced over the DP group, so every rank knows the
same perplexity. Pipeline parallelism: megatron's forward-only schedule; the last stage computes the
loss and the sums are all-reduced over the PP group (other stages contribute zeros). Tensor
parallelism: the vocab-parallel cross entropy of training (padding columns excluded).

The loss is training's chunked CE from the final hidden states and the output-weight shard (the output
layer deferred for the duration, ``training/output_layer.py``; ``fused_linear_kd_loss``'s CE-only mode
without autograd): logits exist one chunk at a time in the model's dtype with fp32 row statistics, never
as ``[b, s, V/tp]`` and never upcast whole (the logits path held the logits, an fp32 copy, its clone and
megatron's fp32 working copies: ~3 fp32 copies per micro-batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.runtime import compute_device


def load_supernet(ckpt_dir: str | Path):
    """(ModelConfig, this rank's ElasticGPTModel in eval mode) from a model checkpoint, at the runtime's TP/PP."""
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.subnet.supernet import build_supernet

    cfg, model = load_model(ckpt_dir, builder=build_supernet)
    return cfg, model.eval()


@dataclass
class EvalData:
    """Micro-batches of one data-parallel rank; ``global_batches`` over all DP ranks."""

    batches: list[dict]
    seq_length: int
    micro_batch_size: int
    global_batches: int


def load_batches(data_dir: str | Path, cfg: ModelConfig, *, split: Literal["train", "valid", "test"], num_batches: int,
                 seq_length: int, micro_batch_size: int, seed: int = 1234, skip_batches: int = 0) -> EvalData:
    """``num_batches`` global micro-batches (split over DP ranks) of a prepared directory's split.

    ``skip_batches`` global micro-batches are skipped first (e.g. to keep search and test batches apart).
    With ``skip_batches=0`` these are the samples a training run of the same ``seed`` and ``seq_length``
    evaluates with ``eval_iters`` / ``test_iters = num_batches`` (the test split is built for exactly them).
    Raises UserError when the split cannot provide them (an empty validation set included).
    """
    from nemo_subnet.cli import UserError
    from nemo_subnet.data import GPTDataConfig, MicroBatchIterator, build_gpt_datasets

    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    if num_batches < 1:
        raise UserError(f"the number of {split} batches must be at least 1, got {num_batches}")
    if num_batches % dp_size:
        raise UserError(f"{num_batches} {split} batches cannot be split evenly over {dp_size} data-parallel ranks")
    data_cfg = GPTDataConfig(data_dir=Path(data_dir), seq_length=seq_length, seed=seed,
                             max_position=cfg.max_position_embeddings, model_vocab_size=cfg.padded_vocab_size)
    needed = (num_batches + skip_batches) * micro_batch_size
    datasets = build_gpt_datasets(data_cfg, train_samples=needed, valid_samples=None,
                                  test_samples=needed if split == "test" else None)
    dataset = {"train": datasets.train, "valid": datasets.valid, "test": datasets.test}[split]
    available = len(dataset) // micro_batch_size
    if available < needed // micro_batch_size:
        raise UserError(f"the {split} split of {data_dir} holds {len(dataset)} samples of {seq_length} tokens "
                        f"= {available} micro-batches of {micro_batch_size}, fewer than the {num_batches + skip_batches} "
                        f"needed: use fewer batches, a shorter sequence or more {split} data")
    iterator = MicroBatchIterator(dataset, micro_batch_size, dp_rank=dp_rank, dp_size=dp_size,
                                  consumed_samples=skip_batches * micro_batch_size)
    device = compute_device()
    batches = [{k: v.to(device) for k, v in next(iterator).items()} for _ in range(num_batches // dp_size)]
    return EvalData(batches=batches, seq_length=seq_length, micro_batch_size=micro_batch_size, global_batches=num_batches)


def random_batches(vocab_size: int, *, num_batches: int, seq_length: int, micro_batch_size: int, seed: int = 0) -> EvalData:
    """Uniform random tokens (tests and smoke runs); DP ranks get different batches of one seeded stream."""
    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(num_batches):
        tokens = torch.randint(0, vocab_size, (micro_batch_size, seq_length + 1), generator=gen)
        if i % dp_size == dp_rank:
            batch = {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(),
                     "loss_mask": torch.ones(micro_batch_size, seq_length),
                     "position_ids": torch.arange(seq_length).expand(micro_batch_size, -1).contiguous()}
            batches.append({k: v.to(compute_device()) for k, v in batch.items()})
    return EvalData(batches=batches, seq_length=seq_length, micro_batch_size=micro_batch_size, global_batches=num_batches)


def _all_reduce(values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=op, group=parallel_state.get_pipeline_model_parallel_group())
        dist.all_reduce(values, op=op, group=parallel_state.get_data_parallel_group())
    return values


@torch.no_grad()
def evaluate_loss(model, cfg: ModelConfig, data: EvalData) -> float:
    """Mean per-token cross entropy (nats) over all DP ranks' batches; the same value on every rank."""
    from nemo_subnet.training.distill import LMOutput, cross_entropy
    from nemo_subnet.training.output_layer import hidden_output, is_deferred, output_weight

    model.eval()
    device = compute_device()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, tokens]: on the device, no sync per micro-batch

    def forward_step(data_iterator, step_model):
        batch = next(data_iterator)
        output = step_model(batch["tokens"], batch["position_ids"], attention_mask=batch.get("attention_mask"))

        def loss_func(output):  # [b, s, h] (final hidden states), or [b, s, v_local] from a model without one
            mask = batch["loss_mask"].float()
            n_tokens = mask.sum()
            out = LMOutput(output, output_weight(step_model) if is_deferred(step_model) else None)
            mean = cross_entropy(out, batch["labels"], mask, cfg.vocab_size)
            sums[0] += (mean * n_tokens).double()
            sums[1] += n_tokens.double()
            return output.sum() * 0.0, {}

        return output, loss_func

    with hidden_output(model):
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(data.batches), model=[model],
            num_microbatches=len(data.batches), seq_length=data.seq_length, micro_batch_size=data.micro_batch_size,
            forward_only=True)
    sums = _all_reduce(sums).cpu()
    if sums[1] <= 0:
        from nemo_subnet.cli import UserError

        raise UserError("the evaluation data holds no token with a loss (empty validation data or an all-zero loss mask)")
    return float(sums[0] / sums[1])


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))
