"""Deferred output layer: the last stage returns its final hidden states, the loss forms the logits.

With the fused-output loss on, neither the student nor the teacher ever materialises ``[b, s, V/tp]``
logits: the loss reads the final hidden states and this rank's output-weight shard and forms logits
chunk by chunk (``nemo_subnet.kernels.fused_linear_kd_loss`` and the top-k ops, merging row statistics over
the TP group).

GPTModel builds its output layer (a ``ColumnParallelLinear``) directly, without a spec slot, and calls
it as ``output_layer(hidden, weight=shared_weight, runtime_gather_output=...)``. ``defer_logits`` swaps
that one module's ``forward`` (an instance attribute: parameters, names and checkpoints are unchanged)
for one that applies only the layer's input-side communication — ``copy_to_tensor_model_parallel_region``
(backward all-reduces grad_hidden over TP), or the sequence-parallel all-gather — and returns the
hidden states; the weight it would have used (the tied embedding's or its own) is kept in
``deferred_weight`` for the loss. GPTModel then returns ``[b, s, h]`` instead of ``[b, s, V/tp]``.
"""

from __future__ import annotations

import contextlib

import torch
from megatron.core import tensor_parallel


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient.

    megatron's ``copy_to_tensor_model_parallel_region`` backward all-reduces ``grad.contiguous()`` and returns
    the original ``grad``: a non-contiguous gradient would silently skip the TP all-reduce. The output
    layer's own matmul always produced a contiguous one; here GPTModel's ``[s, b, h] -> [b, s, h]``
    transpose after the output layer hands back a transposed (non-contiguous) gradient."""

    @staticmethod
    def forward(ctx, input_):
        return input_.view_as(input_)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _hidden_forward(layer, input_, weight=None, runtime_gather_output=None):
    if layer.sequence_parallel:
        # megatron's output layer all-gathers the sequence (backward: reduce-scatter of the partial grads)
        hidden = tensor_parallel.gather_from_sequence_parallel_region(input_, tensor_parallel_output_grad=True)
    else:
        hidden = tensor_parallel.copy_to_tensor_model_parallel_region(input_)  # backward: all-reduce over TP
    hidden = _ContiguousGrad.apply(hidden)
    # through __dict__: nn.Module would register a Parameter attribute as a second parameter
    layer.__dict__["deferred_weight"] = layer.weight if weight is None else weight  # [V/tp, h]
    return hidden, None  # [s, b, h]


def defer_logits(model) -> None:
    """Make ``model``'s last stage (a GPTModel, possibly wrapped) return final hidden states; no-op elsewhere."""
    layer = _output_layer(model)
    if layer is not None and "forward" not in layer.__dict__:
        layer.forward = _hidden_forward.__get__(layer)


def is_deferred(model) -> bool:
    layer = _output_layer(model)
    return layer is not None and "forward" in layer.__dict__


def output_weight(model) -> torch.Tensor:
    """The weight shard the last forward would have multiplied by (set during that forward)."""
    return _output_layer(model).deferred_weight


@contextlib.contextmanager
def hidden_output(model):
    """Final hidden states instead of logits for the duration of a block (evaluation's chunked CE), then the
    model's previous output again."""
    layer = _output_layer(model)
    owned = layer is not None and "forward" not in layer.__dict__
    if owned:
        defer_logits(model)
    try:
        yield
    finally:
        if owned:
            del layer.__dict__["forward"]


@contextlib.contextmanager
def logits_output(model):
    """Plain logits for the duration of a block (validation, generation)."""
    layer = _output_layer(model)
    deferred = layer is not None and layer.__dict__.pop("forward", None)
    try:
        yield
    finally:
        if deferred:
            layer.forward = deferred


def _output_layer(model):
    while not hasattr(model, "output_layer") and hasattr(model, "module"):
        model = model.module
    return getattr(model, "output_layer", None)
