"""Objectives: what a candidate costs (validation perplexity) and what it weighs (parameters, FLOPs).

An objective is any callable ``SubnetConfig -> float`` (lower is better; with multi-fidelity it also takes
the number of validation micro-batches to use, a prefix of its batches); the runner adds parameters, FLOPs
per token and evaluation time to every record itself, and the tokens and executed FLOPs of every
evaluation when the objective has ``cost(subnet, batches)``. ``SupernetPerplexity`` is the real one: the
sub-network's perplexity on held-out tokens (evaluation.py: DP shards the batches, TP/PP as the runtime is
laid out, padded vocabulary excluded), the same number as the extracted student's, evaluated either

- ``compact`` (default): at the sub-network's own size, built on every rank from the resident weights
  (subnet/compact.py), so a 1/3 candidate costs about a third of a teacher forward; or
- ``masked``: the super-network with the candidate's masks (no weight copy, full-width matrices, skipped
  layers free in eager mode); the static-graph / compiled mode runs every layer. The better trade for
  tiny evaluations and for one compiled graph over all candidates (docs/search.md has the numbers).

FLOPs per token (``flops_per_token``): training FLOPs (forward + backward) of the model the candidate
extracts to, counted by ``nemo_subnet.models.counting`` (the counter training's MFU and the planner use).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.models.counting import forward_flops_per_token, train_flops_per_token
from nemo_subnet.subnet.config import SubnetConfig, resolve
from nemo_subnet.subnet.extract import extract_model_config


def flops_per_token(cfg: ModelConfig, subnet: SubnetConfig, seq_length: int) -> float:
    """Training FLOPs per token of the sub-network ``subnet`` of ``cfg`` (per-layer sizes counted)."""
    return train_flops_per_token(extract_model_config(cfg, resolve(cfg, subnet)), seq_length)


def forward_flops(cfg: ModelConfig, subnet: SubnetConfig, seq_length: int) -> float:
    """Forward (evaluation) FLOPs per token of the sub-network ``subnet`` of ``cfg``."""
    return forward_flops_per_token(extract_model_config(cfg, resolve(cfg, subnet)), seq_length)


class EvalForward(str, enum.Enum):
    """How a candidate's forward runs; both give the extracted student's numbers."""

    COMPACT = "compact"
    """At the candidate's own size, built from the resident weights (subnet/compact.py)."""
    MASKED = "masked"
    """The super-network with the candidate's masks: full-width matrices, no weight copy."""


@dataclass
class SupernetPerplexity:
    """Validation perplexity of a sub-network of the super-network (collective: every rank calls it in step)."""

    model: object
    """This rank's ElasticGPTModel."""
    cfg: ModelConfig
    data: object
    """This rank's EvalData (evaluation.load_batches): the full-fidelity batches."""
    forward: EvalForward = EvalForward.COMPACT

    def __post_init__(self):
        self.forward = EvalForward(self.forward)

    def _data(self, batches: int | None):
        """The first ``batches`` global micro-batches (each DP rank's first batches / dp: a global prefix)."""
        if batches is None or batches == self.data.global_batches:
            return self.data
        from megatron.core import parallel_state

        from nemo_subnet.importance.evaluation import EvalData

        dp = parallel_state.get_data_parallel_world_size()
        if not 0 < batches <= self.data.global_batches or batches % dp:
            raise ValueError(f"{batches} micro-batches asked of {self.data.global_batches} split over {dp} DP ranks")
        return EvalData(batches=self.data.batches[: batches // dp], seq_length=self.data.seq_length,
                        micro_batch_size=self.data.micro_batch_size, global_batches=batches)

    def cost(self, subnet: SubnetConfig, batches: int | None = None) -> tuple[int, float]:
        """(tokens, forward FLOPs) one evaluation executes: the sub-network's when compact; full-width kept
        layers when masked (skipped layers are free in eager mode, computed in the static graph)."""
        data = self._data(batches)
        tokens = data.global_batches * data.micro_batch_size * data.seq_length
        if self.forward is EvalForward.COMPACT:
            executed = subnet
        elif getattr(self.model, "static_graph", False):
            executed = SubnetConfig()
        else:
            executed = SubnetConfig(layers=len(resolve(self.cfg, subnet).layers))
        return tokens, tokens * forward_flops(self.cfg, executed, data.seq_length)

    def __call__(self, subnet: SubnetConfig, batches: int | None = None) -> float:
        from nemo_subnet.importance.evaluation import evaluate_loss, perplexity

        import torch
        import torch.distributed as dist

        data = self._data(batches)
        if self.forward is EvalForward.COMPACT:
            from nemo_subnet.subnet.compact import compact_subnet

            value = perplexity(evaluate_loss(compact_subnet(self.model, subnet), self.cfg, data))
        else:
            self.model.set_subnet(subnet)
            try:
                value = perplexity(evaluate_loss(self.model, self.cfg, data))
            finally:
                self.model.reset_subnet()
        if dist.is_initialized():  # every rank must tell its strategy the bit-identical value
            from nemo_subnet.runtime import compute_device

            value_t = torch.tensor([value], dtype=torch.float64, device=compute_device())
            dist.broadcast(value_t, src=0)
            value = float(value_t.item())
        return value
