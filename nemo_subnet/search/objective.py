"""Objectives: what a candidate costs (validation perplexity) and what it weighs (parameters, FLOPs).

An objective is any callable ``SubnetConfig -> float`` (lower is better); the runner adds parameters,
FLOPs per token and evaluation time to every record itself. ``SupernetPerplexity`` is the real one: the
masked super-network's perplexity on held-out tokens (evaluation.py: DP shards the batches, TP/PP as the
runtime is laid out, padded vocabulary excluded), so a candidate costs one forward pass over the
validation batches and no weight copy.

FLOPs per token (``flops_per_token``), training (forward + backward = 3 x forward), Kaplan et al.'s
accounting: 6 * N_matmul + 6 * sum over layers of (2 * seq_length * heads * d), where N_matmul counts the
weights of every matrix multiply (attention, MLP, output layer; not embeddings, norms or biases) and the
second term is QK^T and attention x V (no causal halving). Forward-only (inference): divide by 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.subnet.config import SubnetConfig, resolve
from nemo_subnet.subnet.extract import extract_model_config


def flops_per_token(cfg: ModelConfig, subnet: SubnetConfig, seq_length: int) -> int:
    sub = extract_model_config(cfg, resolve(cfg, subnet))
    h, d = sub.hidden_size, sub.kv_channels
    matmul, attention = sub.vocab_size * h, 0  # output layer
    for layer in range(sub.num_layers):
        heads, groups, ffn = sub.layer_sizes(layer)
        matmul += (heads + 2 * groups) * d * h + heads * d * h  # qkv, proj
        matmul += (3 if sub.gated_mlp else 2) * ffn * h  # fc1 (gate|up), fc2
        attention += 2 * seq_length * heads * d
    return 6 * matmul + 6 * attention


def forward_flops(cfg: ModelConfig, subnet: SubnetConfig, seq_length: int) -> float:
    """Forward (evaluation) FLOPs per token of the sub-network: a third of ``flops_per_token``."""
    return flops_per_token(cfg, subnet, seq_length) / 3


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
