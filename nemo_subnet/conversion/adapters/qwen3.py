"""Qwen3: Llama with per-head RMSNorm on queries and keys (q_norm/k_norm), an explicit head_dim."""

from __future__ import annotations

from nemo_subnet.conversion.adapters.llama import LlamaAdapter
from nemo_subnet.models.config import Family


class Qwen3Adapter(LlamaAdapter):
    model_types = ("qwen3",)
    hf_architecture = "Qwen3ForCausalLM"
    family = Family.QWEN3
    hidden_divisible_by_heads = False
