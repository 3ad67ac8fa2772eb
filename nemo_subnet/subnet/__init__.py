"""Elastic super-network: sub-network configs, masked modules, parameter counting, extraction."""

from nemo_subnet.subnet.config import LayerSubnet, ResolvedSubnet, SubnetConfig, SubnetConfigError, resolve

__all__ = ["LayerSubnet", "ResolvedSubnet", "SubnetConfig", "SubnetConfigError", "resolve"]
