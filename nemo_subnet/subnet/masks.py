"""Elastic modules: the spec-slot implementations that make a super-network switchable in place.

Masks keep every shape static (TP, PP, distributed optimizers and CUDA graphs keep working); extraction
is where weights are physically sliced. Only four places need a mask:

- ``MaskedNorm`` (``input_layernorm``, ``pre_mlp_layernorm``, ``final_layernorm`` slots): statistics
  over the active hidden channels only, output zero elsewhere. Every reader of the residual stream reads
  it through one of these norms, so inactive hidden channels are never read downstream and receive
  zero gradient; embeddings, projections and the output layer need no mask of their own.
- ``MaskedRowParallelLinear`` (``linear_proj`` and ``linear_fc2`` slots): a mask on its TP-partitioned
  input. On ``linear_proj`` it zeroes the context of dropped query heads (and so every head of a
  dropped query group), on ``linear_fc2`` the activations of dropped FFN neurons; the weights that feed
  them then get zero gradient too.
- ``SkippableLayer`` mixin on the layer class (Megatron has no slot for depth): a dropped layer is the
  identity, on whichever pipeline stage it lives.

Protocol: masks are given in *global* index space (``set_mask(mask | None)``); the module cuts its own
TP shard with ``tp_shard``. ``None`` (or an all-ones mask) switches the module back to its plain,
unmasked path, bit for bit. Mask buffers are allocated once; switching copies into them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.transformer_layer import TransformerLayer

from nemo_subnet.models.layers import ParallelResidualTransformerLayer


def tp_shard(mask: torch.Tensor) -> torch.Tensor:
    """This TP rank's contiguous chunk of a global mask over a TP-partitioned dimension."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return mask.chunk(tp)[parallel_state.get_tensor_model_parallel_rank()] if tp > 1 else mask


class _MaskSlot:
    """One preallocated mask buffer plus an on/off switch, shared by the elastic modules."""

    def _init_mask(self, size: int, device) -> None:
        self.register_buffer("subnet_mask", torch.ones(size, device=device), persistent=False)
        self.mask_active = False
        self.active_count = size

    def _set_local_mask(self, local: torch.Tensor | None) -> None:
        if local is None or bool(local.all()):
            self.mask_active = False
            self.active_count = self.subnet_mask.numel()
            return
        if local.shape != self.subnet_mask.shape:
            raise ValueError(f"mask of shape {tuple(local.shape)} for a dimension of {self.subnet_mask.numel()}")
        self.subnet_mask.copy_(local)
        self.mask_active = True
        self.active_count = int(local.sum().item())


class MaskedNorm(_MaskSlot, torch.nn.Module):
    """LayerNorm / RMSNorm over the active hidden channels (slot contract of Megatron's WrappedTorchNorm)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                 zero_centered_gamma: bool = False, normalization: str | None = None):
        super().__init__()
        if zero_centered_gamma:
            raise ValueError("MaskedNorm does not support zero_centered_gamma")
        self.kind = normalization or config.normalization
        if self.kind not in ("LayerNorm", "RMSNorm"):
            raise ValueError(f"MaskedNorm supports LayerNorm and RMSNorm, not {self.kind}")
        self.eps = eps
        self.hidden_size = hidden_size
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, device=device)) if self.kind == "LayerNorm" else None
        for param in self.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)
        self._init_mask(hidden_size, device)

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self._set_local_mask(mask)  # hidden channels are not TP-partitioned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.mask_active:
            if self.kind == "LayerNorm":
                return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
            return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
        mask, k, h = self.subnet_mask, self.active_count, self.hidden_size
        if self.kind == "RMSNorm":
            # With inactive inputs zeroed, the full-width fused kernel gives the active-channel norm:
            # rms_norm(x*m, eps*k/h) = sqrt(h/k) * x*m / sqrt(sum_active(x^2)/k + eps)
            normed = F.rms_norm(x * mask.to(x.dtype), (h,), None, self.eps * k / h)
            return normed * (self.weight * mask * math.sqrt(k / h)).to(x.dtype)
        xf = x.float()
        mean = (xf * mask).sum(-1, keepdim=True) / k
        centered = (xf - mean) * mask
        var = (centered * centered).sum(-1, keepdim=True) / k
        return (centered * torch.rsqrt(var + self.eps) * self.weight + self.bias * mask).to(x.dtype)


class MaskedRowParallelLinear(_MaskSlot, RowParallelLinear):
    """RowParallelLinear whose (TP-partitioned) input is masked: drops heads or FFN neurons."""

    def __init__(self, input_size: int, output_size: int, *args, config, **kwargs):
        super().__init__(input_size, output_size, *args, config=config, **kwargs)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self._init_mask(input_size // tp, device)

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self._set_local_mask(None if mask is None else tp_shard(mask))

    def forward(self, input_, *args, **kwargs):
        if self.mask_active:
            input_ = input_ * self.subnet_mask.to(input_.dtype)  # [s, b, in/tp] * [in/tp]
        return super().forward(input_, *args, **kwargs)


class SkippableLayer:
    """Mixin for a transformer layer class: ``subnet_skip = True`` makes the layer the identity."""

    subnet_skip = False

    def forward(self, hidden_states, *args, **kwargs):
        if self.subnet_skip:
            return hidden_states, kwargs.get("context")
        return super().forward(hidden_states, *args, **kwargs)


class ElasticTransformerLayer(SkippableLayer, TransformerLayer):
    pass


class ElasticParallelResidualLayer(SkippableLayer, ParallelResidualTransformerLayer):
    pass
