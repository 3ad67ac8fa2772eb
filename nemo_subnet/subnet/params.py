"""Parameter counts computed from a config alone, without building a model.

``count_parameters(cfg)`` equals the number of parameters of the Megatron model built from ``cfg``
(padded vocabulary included, tied output counted once); ``subnet_parameters`` is that count for the
model a sub-network would extract to.
"""

from __future__ import annotations

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.subnet.config import SubnetConfig, resolve
from nemo_subnet.subnet.extract import extract_model_config


def count_parameters(cfg: ModelConfig, *, include_padding: bool = True) -> int:
    h, d = cfg.hidden_size, cfg.kv_channels
    vocab = cfg.padded_vocab_size if include_padding else cfg.vocab_size
    norm = 2 * h if cfg.normalization == "LayerNorm" else h
    total = vocab * h * (1 if cfg.tie_embeddings else 2) + norm  # embedding, output layer, final norm
    for layer in range(cfg.num_layers):
        heads, groups, ffn = cfg.layer_sizes(layer)
        qkv_rows = (heads + 2 * groups) * d
        total += 2 * norm
        total += qkv_rows * h + (qkv_rows if cfg.add_qkv_bias else 0)
        total += 2 * d if cfg.qk_layernorm else 0
        total += h * heads * d + (h if cfg.add_bias_linear else 0)
        fc1_rows = 2 * ffn if cfg.gated_mlp else ffn
        total += fc1_rows * h + (fc1_rows if cfg.add_bias_linear else 0)
        total += ffn * h + (h if cfg.add_bias_linear else 0)
    return total


def subnet_parameters(cfg: ModelConfig, subnet: SubnetConfig, *, include_padding: bool = True) -> int:
    return count_parameters(extract_model_config(cfg, resolve(cfg, subnet)), include_padding=include_padding)
