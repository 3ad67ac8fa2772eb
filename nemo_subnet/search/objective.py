"""Objectives: what a candidate costs (validation perplexity) and what it weighs (parameters, FLOPs).

An objective is any callable ``SubnetConfig -> float`` (lower is better); the runner adds parameters,
FLOPs per token and evaluation time to every record itself. ``SupernetPerplexity`` is the real one: the
masked super-network's perplexity on held-out tokens (evaluation.py: DP shards the batches, TP/PP as the
runtime is laid out, padded vocabulary excluded), so a candidate costs one forward pass over the
validation batches and no weight copy.

FLOPs per token (``flops_per_token``): training FLOPs (forward + backward) of the model the candidate
extracts to, counted by ``nemo_subnet.models.counting`` (the counter training's MFU and the planner use).
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import train_flops_per_token
from nemo_subnet.subnet.config import SubnetConfig, resolve
from nemo_subnet.subnet.extract import extract_model_config


def flops_per_token(cfg: ModelConfig, subnet: SubnetConfig, seq_length: int) -> float:
    """Training FLOPs per token of the sub-network ``subnet`` of ``cfg`` (per-layer sizes counted)."""
    return train_flops_per_token(extract_model_config(cfg, resolve(cfg, subnet)), seq_length)


@dataclass
class SupernetPerplexity:
    """Validation perplexity of the masked super-network (collective: every rank calls it in step)."""

    model: object
    """This rank's ElasticGPTModel."""
    cfg: ModelConfig
    data: object
    """This rank's EvalData (evaluation.load_batches)."""

    def __call__(self, subnet: SubnetConfig) -> float:
        from nemo_subnet.importance.evaluation import evaluate_loss, perplexity

        import torch
        import torch.distributed as dist

        self.model.set_subnet(subnet)
        try:
            value = perplexity(evaluate_loss(self.model, self.cfg, self.data))
        finally:
            self.model.reset_subnet()
        if dist.is_initialized():  # every rank must tell its strategy the bit-identical value
            from nemo_subnet.runtime import compute_device

            value_t = torch.tensor([value], dtype=torch.float64, device=compute_device())
            dist.broadcast(value_t, src=0)
            value = float(value_t.item())
        return value
