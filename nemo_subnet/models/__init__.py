"""Model definitions: family-neutral config, layer specs, and the GPTModel builder."""

from nemo_subnet.models.builder import build_gpt_model
from nemo_subnet.models.config import Family, ModelConfig, RopeScaling

__all__ = ["Family", "ModelConfig", "RopeScaling", "build_gpt_model"]
