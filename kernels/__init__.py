"""Distillation-loss kernels (installed as ``nemo_subnet.kernels``)."""
