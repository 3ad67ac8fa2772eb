"""Full-vocabulary logits from this rank's model at any TP/PP (tests, parity checks, evaluation).

Pipeline stages run through megatron-core's own forward-only schedule; TP shards of the logits are
gathered along the vocabulary. Padding columns beyond the true vocabulary are cut off.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_subnet.models.config import ModelConfig
from nemo_subnet.runtime import compute_device


def _position_ids(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


@torch.no_grad()
def forward_logits(model, cfg: ModelConfig, tokens: torch.Tensor) -> torch.Tensor | None:
    """Logits [b, s, vocab_size] on the last pipeline stage; None on the other stages. ``tokens`` may be a
    host tensor (callers hold them there); they are moved to the model's device once."""
    model.eval()
    tokens = tokens.to(compute_device())
    collected: list[torch.Tensor] = []

    def forward_step(data_iterator, step_model):
        batch = next(data_iterator)
        output = step_model(batch, _position_ids(batch), attention_mask=None)

        def keep_logits(output_tensor):
            collected.append(output_tensor)
            return output_tensor.sum() * 0.0, {}

        return output, keep_logits

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([tokens]), model=[model], num_microbatches=1,
        seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
    )
    if not parallel_state.is_pipeline_last_stage():
        return None
    logits = collected[0]  # [b, s, padded_vocab / tp] when parallel_output
    if model.parallel_output and parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = tensor_parallel.gather_from_tensor_model_parallel_region(logits)
    return logits[..., : cfg.vocab_size].float()
