"""How a model executes, as opposed to what it computes: activation recompute and sequence parallelism.

These never change a checkpoint (``ModelConfig`` holds the function, the layout is the runtime's); they
trade compute or communication for activation memory and map onto Megatron's own TransformerConfig
fields, so Megatron's implementations do the work:

- ``recompute="selective"``: Megatron's selective recompute of the MLP (``recompute_modules = ["mlp"]``): each
  layer keeps only the MLP's input and recomputes its forward in backward. The MLP holds most of a layer's
  activations (gated: fc1 output, activation input and output, their product = 5 x ffn per token; 64 % of a
  Llama-shaped layer's saved bytes, measured on CPU) for ~2/3 of its matmul FLOPs, so it costs about 3/4 of
  full recompute's extra compute (+20-25 % of a step for Llama shapes) for about 2/3 of its savings.
  Megatron's classic choice, ``core_attn``, saves nothing with our SDPA core attention: flash / fused SDPA
  never forms the ``[b, heads, s, s]`` scores, q, k, v are kept anyway and the output is linear_proj's input,
  so only the fp32 logsumexp (heads per token: 0.1 % of a layer) would go, at the price of a second
  attention forward. (``layernorm`` recompute needs transformer-engine.)
- ``recompute="full"``: whole transformer layers are recomputed in backward (``recompute_method`` uniform
  over blocks of ``recompute_num_layers`` layers): only each block's input is kept, at the cost of one
  more forward (~33% more compute). For when activations still do not fit.
- ``sequence_parallel``: the residual stream, norms and dropout are split along the sequence over the TP
  group (activation memory / tp outside attention and MLP; all-gather / reduce-scatter instead of
  all-reduce). Needs tp > 1. Our ``Norm`` (norms.py) marks its parameters so Megatron all-reduces their
  gradients over TP; the fused output all-gathers the sequence the way Megatron's output layer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ExecutionOptions:
    recompute: Literal["none", "selective", "full"] = "none"
    recompute_num_layers: int = 1
    """Layers per recompute block with ``recompute="full"`` (a divisor of the layers per pipeline stage)."""
    sequence_parallel: bool = False

    def check(self, tp: int, layers_per_stage: int | None = None, model=None) -> None:
        """Raise ValueError naming the option that cannot run here (``model``: the ModelConfig it would run)."""
        if self.recompute not in ("none", "selective", "full"):
            raise ValueError(f"recompute {self.recompute!r} is not one of none, selective, full")
        sequential_bias = model is not None and model.add_bias_linear and not model.parallel_residual
        if self.recompute == "selective" and sequential_bias:
            # megatron's sequential layer checkpoints the MLP with linear_fc2's bias as an output: its backward
            # never finishes (our parallel-residual layer adds the bias inside the checkpoint instead)
            raise ValueError("recompute selective is not supported for a sequential layer with linear biases "
                             "(add_bias_linear): use recompute full")
        if self.recompute == "full":
            if self.recompute_num_layers < 1:
                raise ValueError("recompute_num_layers must be at least 1")
            if layers_per_stage is not None and layers_per_stage % self.recompute_num_layers:
                raise ValueError(f"recompute_num_layers {self.recompute_num_layers} does not divide the "
                                 f"{layers_per_stage} layers per pipeline stage")
        if self.sequence_parallel and tp < 2:
            raise ValueError("sequence_parallel needs tp > 1 (it splits the sequence over the TP group)")

    def transformer_fields(self) -> dict:
        """The TransformerConfig fields these options set."""
        fields: dict = {"sequence_parallel": self.sequence_parallel}
        if self.recompute == "selective":
            fields.update(recompute_granularity="selective", recompute_modules=["mlp"])
        elif self.recompute == "full":
            fields.update(recompute_granularity="full", recompute_method="uniform",
                          recompute_num_layers=self.recompute_num_layers)
        return fields
