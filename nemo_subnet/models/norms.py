"""LayerNorm / RMSNorm for Megatron's norm slots, with weights in the model's parameter dtype.

Megatron's local spec fills its norm slots with ``WrappedTorchNorm`` (a plain ``torch.nn.LayerNorm`` /
``RMSNorm``, created in fp32) or, where apex is installed, ``FusedLayerNorm`` (fp32 weights too). Megatron
itself gets bf16 norms by wrapping the whole model in ``Float16Module``, which we don't: our models are
used directly (search, importance, KD teacher and student). So a bf16 model built from the local spec
would normalize bf16 activations with fp32 weights (mixed-dtype kernels, fp32 outputs fed to bf16
matmuls) or fail in apex's dtype checks. ``Norm`` holds its weights in ``config.params_dtype``, as
transformer-engine's ``TENorm`` does; the kernels (``F.layer_norm``, ``F.rms_norm``) accumulate the
statistics in fp32 for bf16 inputs on CPU and GPU.

Same state-dict keys as the torch norms it replaces (``weight``, and ``bias`` for LayerNorm), the same
constructor contract as ``WrappedTorchNorm``, and in fp32 the same calls: the outputs are bitwise those
of the local spec. Unlike ``WrappedTorchNorm`` it supports sequence parallelism: its parameters carry the
``sequence_parallel`` mark that makes Megatron all-reduce their gradients over the TP group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_KINDS = ("LayerNorm", "RMSNorm")


class Norm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                 zero_centered_gamma: bool = False, normalization: str | None = None):
        super().__init__()
        if zero_centered_gamma or config.layernorm_zero_centered_gamma:
            raise ValueError(f"{type(self).__name__} does not support zero_centered_gamma")
        self.kind = normalization or config.normalization
        if self.kind not in NORM_KINDS:
            raise ValueError(f"{type(self).__name__} supports {' and '.join(NORM_KINDS)}, not {self.kind}")
        self.eps = eps
        self.hidden_size = hidden_size
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        dtype = config.params_dtype
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.bias = (torch.nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))
                     if self.kind == "LayerNorm" else None)
        for param in self.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [s, b, h] -> [s, b, h]
        if self.kind == "LayerNorm":
            return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
        return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
