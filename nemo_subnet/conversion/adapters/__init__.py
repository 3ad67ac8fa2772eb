"""HF family adapters, looked up by HF ``model_type`` or by our Family."""

from __future__ import annotations

from nemo_subnet.conversion.adapters.base import FamilyAdapter, Fuse, WeightRule
from nemo_subnet.conversion.adapters.gpt_neox import GPTNeoXAdapter
from nemo_subnet.conversion.adapters.llama import LlamaAdapter
from nemo_subnet.conversion.adapters.qwen2 import Qwen2Adapter
from nemo_subnet.conversion.adapters.qwen3 import Qwen3Adapter
from nemo_subnet.models.config import Family

ADAPTERS: dict[str, FamilyAdapter] = {
    "gpt_neox": GPTNeoXAdapter(),
    "llama": LlamaAdapter(),
    "qwen2": Qwen2Adapter(),
    "qwen3": Qwen3Adapter(),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(ADAPTERS))


def adapter_for_model_type(model_type: str) -> FamilyAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}") from None


def adapter_for_family(family: Family) -> FamilyAdapter:
    return ADAPTERS[Family(family).value]


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "FamilyAdapter", "Fuse", "WeightRule",
           "adapter_for_family", "adapter_for_model_type"]
