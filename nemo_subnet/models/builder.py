"""Build this rank's Megatron GPTModel (its TP shard and PP stage) for a ModelConfig."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec

from nemo_subnet.models.config import ModelConfig, to_transformer_config
from nemo_subnet.models.specs import gpt_block_spec
from nemo_subnet.runtime import compute_device


def build_gpt_model(cfg: ModelConfig, *, params_dtype: torch.dtype | None = None, parallel_output: bool = True,
                    perform_initialization: bool = True, layer_spec: ModuleSpec | None = None,
                    model_class: type[GPTModel] = GPTModel, execution=None) -> GPTModel:
    """This rank's part of the model; Megatron's parallel_state must be initialized (init_runtime).

    ``layer_spec`` may be a layer ModuleSpec or a TransformerBlockSubmodules (e.g. the super-network's,
    which also swaps the final norm); ``model_class`` a GPTModel subclass with the same constructor;
    ``execution`` the recompute / sequence-parallel options (models/execution.py)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    config = to_transformer_config(cfg, tp, pp, params_dtype=params_dtype, perform_initialization=perform_initialization,
                                   execution=execution)
    model = model_class(
        config=config,
        transformer_layer_spec=layer_spec or gpt_block_spec(cfg),
        vocab_size=cfg.padded_vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope",
        rotary_percent=cfg.rotary_percent,
        rotary_base=cfg.rotary_base,
    )
    if not perform_initialization:
        _mark_tensor_parallel_params(model)
    if cfg.rope_scaling is not None:
        # GPTModel only forwards the scaling factor; apply Megatron's own llama3 scaling with all of the
        # checkpoint's parameters instead of its defaults.
        rope = model.rotary_pos_emb
        rope.inv_freq = rope._apply_scaling(rope.inv_freq, **vars(cfg.rope_scaling))
    device = compute_device()
    if device.type == "cuda":
        model.cuda(device)
    return model


def _mark_tensor_parallel_params(model) -> None:
    """Megatron tags TP-sharded weights (``tensor_model_parallel``, ``partition_dim``) only inside its init
    routines; a model built to receive loaded weights must carry the tags too, or sharding and grad-norm
    clipping (which skips TP duplicates by this tag) go wrong."""
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding, set_tensor_model_parallel_attributes)

    for module in model.modules():
        if isinstance(module, (VocabParallelEmbedding, ColumnParallelLinear)):
            dim = 0
        elif isinstance(module, RowParallelLinear):
            dim = 1
        else:
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and not getattr(weight, "tensor_model_parallel", False):
            set_tensor_model_parallel_attributes(weight, True, dim, 1)

