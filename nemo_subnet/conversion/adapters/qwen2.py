"""Qwen2: Llama with biases on the q/k/v projections only."""

from __future__ import annotations

from nemo_subnet.conversion.adapters.llama import LlamaAdapter
from nemo_subnet.models.config import Family


class Qwen2Adapter(LlamaAdapter):
    model_types = ("qwen2",)
    hf_architecture = "Qwen2ForCausalLM"
    family = Family.QWEN2
    hidden_divisible_by_heads = False

    def biases(self, hf) -> tuple[bool, bool]:
        return True, False
