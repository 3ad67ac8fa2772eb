"""nemo-subnet: find, extract and distill the best sub-network of a large LM on Megatron-core."""

__version__ = "0.1.0"
