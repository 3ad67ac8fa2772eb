"""The gradients of the fused output ops, built chunk by chunk in forward and scaled once in backward.

The fused ops (``fused_linear_kd_loss``, ``fused_linear_topk_kd_loss``) turn each chunk's ``d loss / d logits``
``G_c`` [C, V] into two gradients as soon as they have it:

    grad_hidden[c] = G_c W        (each row written once: one rounding in the input dtype)
    grad_weight   += G_c^T h_c    (a sum over every chunk of the micro-batch)

``grad_weight`` is accumulated in fp32 whatever the weight's dtype, as megatron accumulates its own output
layer's gradient in the fp32 ``main_grad``: summing chunk after chunk in bf16 would round the running sum
once per chunk (and drop contributions smaller than half its ulp). With a low-precision weight each
chunk's product is formed by cuBLAS in that dtype (fp32 accumulation inside the GEMM) in row blocks of at
most ``BLOCK_ELEMENTS`` and added into the fp32 buffer, so the transient is bounded like a logits chunk.
Backward multiplies by the upstream gradient (1 / num_microbatches under megatron's schedules) in fp32
and rounds each gradient to its parameter's dtype once; the scale is never rounded to bf16 first.

Nothing is built when autograd will not ask for it: the callers detach their inputs outside grad mode
(``ctx.needs_input_grad`` follows ``requires_grad``, not ``torch.is_grad_enabled()``).
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 25
"""Elements of one transient block of a chunk's grad_weight product (64 MiB in bf16), and of one scaling block."""


def detach_outside_grad_mode(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs as given under autograd; detached when no graph is being built (no_grad, validation)."""
    if torch.is_grad_enabled():
        return tensors
    return tuple(t.detach() for t in tensors)


class ChunkGrads:
    """grad_hidden [N, H] (input dtype) and the fp32 grad_weight [V, H] of one call, filled chunk by chunk."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, need_hidden: bool, need_weight: bool):
        self.hidden = hidden.new_empty(hidden.shape) if need_hidden else None  # [n, h]
        self.weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        self.weight_dtype = weight.dtype

    @property
    def needed(self) -> bool:
        return self.hidden is not None or self.weight is not None

    def add_chunk(self, start: int, end: int, g_c: torch.Tensor, h_c: torch.Tensor, weight: torch.Tensor) -> None:
        """Chunk rows [start, end): g_c = d loss / d logits [c, v], h_c its hidden states [c, h]."""
        if self.hidden is not None:
            torch.mm(g_c, weight, out=self.hidden[start:end])  # [c, h]
        if self.weight is None:
            return
        if g_c.dtype == torch.float32:
            self.weight.addmm_(g_c.t(), h_c)  # [v, h]
            return
        rows = max(1, BLOCK_ELEMENTS // max(1, h_c.shape[1]))
        for r in range(0, self.weight.shape[0], rows):
            self.weight[r:r + rows] += g_c[:, r:r + rows].t() @ h_c  # [rows, h] in the input dtype, summed in fp32

    def saved(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.hidden, self.weight


def _scale(grad: torch.Tensor | None, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """grad * scale computed in fp32, rounded to ``dtype`` once (row blocks bound the fp32 transient)."""
    if grad is None:
        return None
    scale = scale.to(torch.float32)
    if grad.dtype == torch.float32 and dtype == torch.float32:
        return grad * scale
    out = torch.empty(grad.shape, dtype=dtype, device=grad.device)
    rows = max(1, BLOCK_ELEMENTS // max(1, grad[0].numel()))
    for r in range(0, grad.shape[0], rows):
        torch.mul(grad[r:r + rows].float(), scale, out=out[r:r + rows])
    return out


def scaled_grads(grad_hidden, grad_weight, grad_output: torch.Tensor, weight_dtype: torch.dtype):
    """Backward of a fused op: the saved gradients times the upstream scalar, in the parameters' dtypes."""
    hidden = _scale(grad_hidden, grad_output, None if grad_hidden is None else grad_hidden.dtype)
    return hidden, _scale(grad_weight, grad_output, weight_dtype)
