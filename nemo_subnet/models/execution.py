"""How a model executes, as opposed to what it computes: activation recompute and sequence parallelism.

These never change a checkpoint (``ModelConfig`` holds the function, the layout is the runtime's); they
trade compute or communication for activation memory and map onto Megatron's own TransformerConfig
fields, so Megatron's implementations do the work:

- ``recompute="selective"``: Megatron's selective recompute of the core attention (``recompute_modules
  = ["core_attn"]``): the ``[b, heads, s, s]`` softmax inputs are recomputed in backward instead of
  kept. Cheap (a few % of step time) and the first thing to turn on at long sequences.
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

    def check(self, tp: int, layers_per_stage: int | None = None) -> None:
        """Raise ValueError naming the option that cannot run here."""
        if self.recompute not in ("none", "selective", "full"):
            raise ValueError(f"recompute {self.recompute!r} is not one of none, selective, full")
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
            fields.update(recompute_granularity="selective", recompute_modules=["core_attn"])
        elif self.recompute == "full":
            fields.update(recompute_granularity="full", recompute_method="uniform",
                          recompute_num_layers=self.recompute_num_layers)
        return fields
