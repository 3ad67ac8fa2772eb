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

Protocol: masks are given in *global* index space, as host tensors; the module cuts its own TP shard
with ``tp_shard``. ``mask_updates(mask | None)`` sets the module's Python switch and returns the
(buffer, host value) pairs that bring its device buffers in line; ``copy_to_buffers`` moves a whole
switch's values in one host->device transfer (``set_mask`` does both for one module). Mask buffers are
allocated once; switching copies into them.

Two forward paths, chosen by ``static_graph`` (set model-wide by ``ElasticGPTModel.set_static_graph``):

- eager (default): branches on the Python switch. ``None`` (or an all-ones mask) runs the plain,
  unmasked path, bit for bit; a skipped layer costs nothing.
- static graph: no Python value that changes per sub-network is read on the forward. Every module runs
  its masked path with the mask and the active count as device buffers, and depth is a tensor gate
  ``torch.where(keep, layer(x), x)`` (exact, and NaN-safe: a skipped layer's output is never mixed in).
  One ``torch.compile`` (or CUDA-graph capture) then serves every sub-network; skipped layers are still
  computed, which is the price of a graph that does not change with the depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.transformer_layer import TransformerLayer

from nemo_subnet.models.layers import ParallelResidualTransformerLayer
from nemo_subnet.models.norms import Norm

BufferUpdate = tuple[torch.Tensor, torch.Tensor]
"""(device buffer, host value of the same number of elements)."""


def tp_shard(mask: torch.Tensor) -> torch.Tensor:
    """This TP rank's contiguous chunk of a global mask over a TP-partitioned dimension."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return mask.chunk(tp)[parallel_state.get_tensor_model_parallel_rank()] if tp > 1 else mask


def copy_to_buffers(updates: list[BufferUpdate]) -> None:
    """Write host values into device buffers with one host->device transfer per device and no host sync.

    The values are packed into one (pinned, on GPU) host tensor, sent with ``non_blocking=True``, and
    scattered into the buffers by device-side copies, so a switch neither waits for the GPU nor costs
    one synchronizing copy per module."""
    by_device: dict[torch.device, list[BufferUpdate]] = {}
    for buffer, value in updates:
        if buffer.numel() != value.numel():
            raise ValueError(f"a value of {value.numel()} elements for a buffer of {buffer.numel()}")
        by_device.setdefault(buffer.device, []).append((buffer, value))
    for device, group in by_device.items():
        packed = torch.cat([value.detach().reshape(-1).to("cpu", torch.float32) for _, value in group])
        if torch.cuda.is_available():
            packed = packed.pin_memory()  # the caching host allocator keeps it alive until the copy is done
        packed = packed.to(device, non_blocking=True)
        offset = 0
        for buffer, value in group:
            buffer.copy_(packed[offset: offset + value.numel()].view(buffer.shape))
            offset += value.numel()


class MaskSlot:
    """One preallocated mask buffer and its active count (what the static path reads), plus the Python
    switch the eager path branches on."""

    static_graph = False

    def _init_mask(self, size: int, device) -> None:
        self.register_buffer("subnet_mask", torch.ones(size, device=device), persistent=False)  # [size], 0/1
        self.register_buffer("subnet_active", torch.full((), float(size), device=device), persistent=False)
        self.mask_active = False
        self.active_count = size

    def _local_updates(self, local: torch.Tensor | None, allow_empty: bool = False) -> list[BufferUpdate]:
        size = self.subnet_mask.numel()
        if local is None:
            host = torch.ones(size)
        elif local.shape != self.subnet_mask.shape:
            raise ValueError(f"mask of shape {tuple(local.shape)} for a dimension of {size}")
        else:
            host = local.detach().to("cpu", torch.float32)  # free for the host masks set_subnet builds
        count = int(host.sum())
        if count < 1 and not allow_empty:
            raise ValueError("the mask keeps no entry; a sub-network keeps at least one of each dimension")
        self.mask_active = count < size
        self.active_count = count
        return [(self.subnet_mask, host), (self.subnet_active, torch.tensor(float(count)))]

    def set_mask(self, mask: torch.Tensor | None) -> None:
        copy_to_buffers(self.mask_updates(mask))


class MaskedNorm(MaskSlot, Norm):
    """LayerNorm / RMSNorm over the active hidden channels (slot contract of Megatron's WrappedTorchNorm)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                 zero_centered_gamma: bool = False, normalization: str | None = None):
        super().__init__(config, hidden_size, eps, persist_layer_norm, zero_centered_gamma, normalization)
        self._init_mask(hidden_size, self.weight.device)

    def mask_updates(self, mask: torch.Tensor | None) -> list[BufferUpdate]:
        return self._local_updates(mask)  # hidden channels are not TP-partitioned

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [s, b, h] -> [s, b, h]
        if self.static_graph:
            return self._forward_static(x)
        if not self.mask_active:
            return super().forward(x)
        mask, k, h = self.subnet_mask, self.active_count, self.hidden_size
        if self.kind == "RMSNorm":
            # With inactive inputs zeroed, the full-width fused kernel gives the active-channel norm:
            # rms_norm(x*m, eps*k/h) = sqrt(h/k) * x*m / sqrt(sum_active(x^2)/k + eps).
            # In fp32 and rounded once at the end, as the unmasked kernel does for bf16 inputs.
            normed = F.rms_norm(x.float() * mask, (h,), None, self.eps * k / h)
            return (normed * (self.weight * mask * math.sqrt(k / h))).to(x.dtype)
        return self._layer_norm_masked(x, mask, k)

    def _forward_static(self, x: torch.Tensor) -> torch.Tensor:
        """The masked norm with mask and count as tensors (the fused RMSNorm above needs eps as a number)."""
        mask, k = self.subnet_mask, self.subnet_active
        if self.kind == "LayerNorm":
            return self._layer_norm_masked(x, mask, k)
        xf = x.float() * mask
        mean_square = (xf * xf).sum(-1, keepdim=True) / k  # [s, b, 1]
        return (xf * torch.rsqrt(mean_square + self.eps) * (self.weight * mask)).to(x.dtype)

    def _layer_norm_masked(self, x: torch.Tensor, mask: torch.Tensor, k) -> torch.Tensor:
        xf = x.float()
        mean = (xf * mask).sum(-1, keepdim=True) / k  # [s, b, 1]
        centered = (xf - mean) * mask
        var = (centered * centered).sum(-1, keepdim=True) / k
        return (centered * torch.rsqrt(var + self.eps) * self.weight + self.bias * mask).to(x.dtype)


class MaskedRowParallelLinear(MaskSlot, RowParallelLinear):
    """RowParallelLinear whose (TP-partitioned) input is masked: drops heads or FFN neurons."""

    def __init__(self, input_size: int, output_size: int, *args, config, **kwargs):
        super().__init__(input_size, output_size, *args, config=config, **kwargs)
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self._init_mask(input_size // tp, self.weight.device)

    def mask_updates(self, mask: torch.Tensor | None) -> list[BufferUpdate]:
        # a TP rank may hold none of the kept heads / neurons: its partial sum is zero, the others' carry it
        return self._local_updates(None if mask is None else tp_shard(mask), allow_empty=True)

    def forward(self, input_, *args, **kwargs):
        if self.static_graph or self.mask_active:
            input_ = input_ * self.subnet_mask.to(input_.dtype)  # [s, b, in/tp] * [in/tp]
        return super().forward(input_, *args, **kwargs)


class SkippableLayer:
    """Mixin for a transformer layer class: a skipped layer is the identity.

    Eager: ``subnet_skip`` (Python) returns the input without running the layer. Static graph: the layer
    runs and ``subnet_keep`` (a device buffer) selects its output or its input."""

    subnet_skip = False
    static_graph = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        device = None if self.config.use_cpu_initialization else torch.cuda.current_device()
        self.register_buffer("subnet_keep", torch.ones((), dtype=torch.bool, device=device), persistent=False)

    def skip_updates(self, skip: bool) -> list[BufferUpdate]:
        self.subnet_skip = skip
        return [(self.subnet_keep, torch.tensor(0.0 if skip else 1.0))]

    def forward(self, hidden_states, *args, **kwargs):
        if self.static_graph:
            output, context = super().forward(hidden_states, *args, **kwargs)
            return torch.where(self.subnet_keep, output, hidden_states), context  # [s, b, h]
        if self.subnet_skip:
            return hidden_states, kwargs.get("context")
        return super().forward(hidden_states, *args, **kwargs)


class ElasticTransformerLayer(SkippableLayer, TransformerLayer):
    pass


class ElasticParallelResidualLayer(SkippableLayer, ParallelResidualTransformerLayer):
    pass
