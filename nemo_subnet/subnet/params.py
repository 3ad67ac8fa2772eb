"""Parameters of the model a sub-network extracts to, computed from configs alone.

``subnet_parameters(cfg, subnet)`` equals the parameter count of the extracted model (``count_parameters``,
nemo_subnet.models.counting, of its config), without building or slicing anything.
"""

from __future__ import annotations

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import count_parameters
from nemo_subnet.subnet.config import SubnetConfig, resolve
from nemo_subnet.subnet.extract import extract_model_config

__all__ = ["count_parameters", "subnet_parameters"]


def subnet_parameters(cfg: ModelConfig, subnet: SubnetConfig, *, include_padding: bool = True) -> int:
    return count_parameters(extract_model_config(cfg, resolve(cfg, subnet)), include_padding=include_padding)
