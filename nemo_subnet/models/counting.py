"""What a model config weighs and costs, from the config alone: parameters and matmul FLOPs per token.

The one counter every layer uses: the sub-network search (a candidate's FLOPs), training (MFU), the planner
(step time, memory) and the study (compute to target). It lives under ``models`` so that all of them can
import it without importing each other. Per-layer sizes (``ModelConfig.layer_sizes``) are used throughout, so
layer-wise students are counted as they are built.

Parameters (``count_parameters``) equal those of the Megatron model built from the config: padded vocabulary,
a tied output counted once, norms and biases included. ``layer_parameters(cfg, layer, tp)`` is one layer on one
tensor-parallel rank (norms and row-parallel biases replicated, everything else split).

FLOPs (Kaplan et al., as Megatron counts): a forward pass costs 2 FLOPs per weight of every matrix multiply
(attention, MLP and the output layer over the padded vocabulary; not embeddings, norms or biases) plus
``2 * 2 * seq_length * heads * head_dim`` per layer for QK^T and attention x V over the full, unmasked
sequence. Training is 3 x forward (backward = 2 forwards).
"""

from __future__ import annotations

from nemo_subnet.models.config import ModelConfig


def norm_parameters(cfg: ModelConfig, width: int) -> int:
    """LayerNorm has a weight and a bias per channel, RMSNorm a weight."""
    return 2 * width if cfg.normalization == "LayerNorm" else width


def layer_parameters(cfg: ModelConfig, layer: int, tp: int = 1) -> int:
    """Parameters of one transformer layer on one TP rank."""
    h, d = cfg.hidden_size, cfg.kv_channels
    heads, groups, ffn = cfg.layer_sizes(layer)
    qkv_rows = (heads + 2 * groups) * d
    fc1_rows = 2 * ffn if cfg.gated_mlp else ffn  # gated: [gate | up]
    sharded = qkv_rows * h + heads * d * h + fc1_rows * h + ffn * h
    sharded += (qkv_rows if cfg.add_qkv_bias else 0) + (fc1_rows if cfg.add_bias_linear else 0)
    replicated = 2 * norm_parameters(cfg, h) + (2 * h if cfg.add_bias_linear else 0) + (2 * d if cfg.qk_layernorm else 0)
    return sharded // tp + replicated


def count_parameters(cfg: ModelConfig, *, include_padding: bool = True) -> int:
    """Parameters of the whole model: embedding (+ untied output layer), every layer, the final norm."""
    vocab = cfg.padded_vocab_size if include_padding else cfg.vocab_size
    total = vocab * cfg.hidden_size * (1 if cfg.tie_embeddings else 2) + norm_parameters(cfg, cfg.hidden_size)
    return total + sum(layer_parameters(cfg, layer) for layer in range(cfg.num_layers))


def attention_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """QK^T and attention x V of one token's forward over every layer."""
    return float(sum(2 * 2 * seq_length * cfg.layer_sizes(i)[0] * cfg.kv_channels for i in range(cfg.num_layers)))


def mlp_flops_per_token(cfg: ModelConfig) -> float:
    """The MLPs of one token's forward over every layer (what selective recompute repeats): 2 FLOPs per weight."""
    per_weight = cfg.hidden_size * (3 if cfg.gated_mlp else 2)  # linear_fc1 (gate | up), linear_fc2
    return float(sum(2 * per_weight * cfg.layer_sizes(i)[2] for i in range(cfg.num_layers)))


def forward_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Matmul FLOPs of one token's forward pass (see the module docstring)."""
    h, d = cfg.hidden_size, cfg.kv_channels
    weights = cfg.padded_vocab_size * h  # output layer
    for layer in range(cfg.num_layers):
        heads, groups, ffn = cfg.layer_sizes(layer)
        weights += (heads + 2 * groups) * d * h + heads * d * h  # linear_qkv, linear_proj
        weights += (3 if cfg.gated_mlp else 2) * ffn * h  # linear_fc1 (gate | up), linear_fc2
    return float(2 * weights) + attention_flops_per_token(cfg, seq_length)


def train_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Forward + backward: 3 x forward."""
    return 3 * forward_flops_per_token(cfg, seq_length)
