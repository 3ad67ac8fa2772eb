"""Activation importance of a super-network from calibration batches (forward only), at any TP/PP/DP.

Hooks (on this rank's modules, full sub-network active):

- forward pre-hooks on ``linear_fc2`` and ``linear_proj``: their inputs are TP-partitioned along the last
  dimension ([s, b, ffn/tp], [s, b, heads*d/tp]); rank r holds the r-th contiguous chunk of the global
  index order, so per-channel statistics are all-gathered over the TP group and concatenated;
- forward hooks on every ``MaskedNorm`` (hidden channels, replicated across TP: no TP reduction);
- forward hooks on every layer: 1 - cosine(input, output) per token (replicated across TP).

Layers live on different PP stages: statistics are indexed by the global layer (``layer_number - 1``),
zero on layers this stage does not hold, and summed over the PP group (max for ``max_abs``); then summed
over the DP group. Every rank ends with the same, complete scores.

Layer-drop perplexity (only for ``layer_metric: perplexity``, the one consumer: 1 + L evaluations):
``set_subnet(layers=[all but i])`` and the validation loss of evaluation.py. The default (cosine) metric
comes from the calibration pass itself, so the stage is one forward pass over the calibration tokens.

The stage shows its progress on the main rank (pass k of n, tokens/s, time left) and records what it
computed in ``scores.meta``: passes, tokens and forward FLOPs (models/counting.py's counter, through
search/objective.py's ``forward_flops``; a layer-drop pass is charged for the layers it runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from nemo_subnet.config import PositiveInt
from nemo_subnet.importance.evaluation import EvalData, evaluate_loss
from nemo_subnet.importance.scores import STATS, Aggregation, ImportanceScores, LayerMetric, shape_of
from nemo_subnet.models.config import ModelConfig
from nemo_subnet.subnet.config import SubnetConfig
from nemo_subnet.runtime import compute_device


@dataclass
class ImportanceConfig:
    """One importance run: ``nemo-subnet importance``'s flags, its ``--config`` file and the pipeline's
    ``importance`` section are this dataclass (the pipeline fills in ckpt, data and out)."""

    aggregation: Aggregation = Aggregation.L2
    """Default aggregation stored with the scores (every aggregation stays computable from the file)."""
    layer_metric: LayerMetric = LayerMetric.COSINE
    """The layer metric the search will read. ``cosine`` comes from the calibration pass at no extra cost;
    ``perplexity`` adds 1 + L evaluations (the loss with each layer alone dropped), so ask for it only
    when the search uses ``layer_metric: perplexity``."""
    progress: bool = True
    """Show a progress bar on the main rank: pass k of n, tokens/s, time left."""
    ckpt: Path | None = None
    """Model checkpoint directory (required)."""
    data: Path | None = None
    """Directory made by ``nemo-subnet data prepare`` (required)."""
    out: Path | None = None
    """Scores file to write, ``.safetensors`` (required)."""
    batches: PositiveInt = 8
    """Calibration micro-batches (global, split over data-parallel ranks)."""
    split: Literal["train", "valid"] = "train"
    """Calibration split."""
    seq_length: PositiveInt = 128
    micro_batch_size: PositiveInt = 4
    layer_drop_batches: PositiveInt | None = None
    """Validation micro-batches of each layer-drop perplexity (``layer_metric: perplexity`` only; valid split;
    default: ``batches``)."""
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    seed: int = 1234
    """Seed of the dataset shuffles."""


class _Progress:
    """One bar over all passes' tokens (main rank only): ``pass k/n``, tokens/s and time left from tqdm."""

    def __init__(self, passes: list[int], enabled: bool):
        self.passes, self.k, self.bar = passes, 0, None
        if enabled and (not dist.is_initialized() or dist.get_rank() == 0):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(passes), unit="tok", unit_scale=True, dynamic_ncols=True)
            self.next_pass()

    def next_pass(self) -> None:
        self.k += 1
        if self.bar is not None:
            self.bar.set_description(f"importance pass {self.k}/{len(self.passes)}")

    def update(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(tokens)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _tokens(data: EvalData) -> int:
    """Global tokens of one pass over ``data`` (every DP rank's micro-batches)."""
    return data.global_batches * data.micro_batch_size * data.seq_length


class _Accumulator:
    """Per-channel sum |a|, sum a^2, max |a| of one dimension, indexed by global layer."""

    def __init__(self, rows: int, width: int, device: torch.device):
        # float64 sums on the device: exact enough over billions of tokens, without a per-batch host copy
        self.stats = {s: torch.zeros(rows, width, dtype=torch.float64, device=device) for s in STATS}

    def add(self, row: int, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).float()  # [tokens, width], fp32 like the model's math
        self.stats["sum_abs"][row] += flat.abs().sum(0, dtype=torch.float64)
        self.stats["sum_sq"][row] += flat.square().sum(0, dtype=torch.float64)
        self.stats["max_abs"][row] = torch.maximum(self.stats["max_abs"][row], flat.abs().amax(0).double())


def _gather_tp(local: torch.Tensor) -> torch.Tensor:
    """[..., w/tp] on each TP rank -> [..., w] in global index order (rank r's chunk r-th)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(tp)]
    dist.all_gather(parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def _reduce_pp_dp(t: torch.Tensor, op) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=op, group=parallel_state.get_pipeline_model_parallel_group())
        dist.all_reduce(t, op=op, group=parallel_state.get_data_parallel_group())
    return t


def _run_forward(model, data: EvalData, progress: _Progress) -> None:
    per_batch = _tokens(data) // data.global_batches * parallel_state.get_data_parallel_world_size()

    def forward_step(data_iterator, step_model):
        batch = next(data_iterator)
        output = step_model(batch["tokens"], batch["position_ids"], attention_mask=batch.get("attention_mask"))
        progress.update(per_batch)  # host arithmetic only: no sync
        return output, lambda out: (out.sum() * 0.0, {})

    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(data.batches), model=[model],
        num_microbatches=len(data.batches), seq_length=data.seq_length, micro_batch_size=data.micro_batch_size,
        forward_only=True)


@torch.no_grad()
def compute_importance(model, cfg: ModelConfig, data: EvalData, config: ImportanceConfig | None = None,
                       *, layer_drop_data: EvalData | None = None) -> ImportanceScores:
    """Scores of every FFN neuron, head, query group, hidden channel and layer; collective over all ranks.

    ``model`` is this rank's ElasticGPTModel; ``data`` this rank's calibration batches; layer-drop
    perplexities (``layer_metric: perplexity`` only) are measured on ``layer_drop_data`` (default: ``data``).
    """
    from nemo_subnet.search.objective import forward_flops
    from nemo_subnet.subnet.masks import MaskedNorm

    config = config or ImportanceConfig()
    layer_drop = LayerMetric(config.layer_metric) is LayerMetric.PERPLEXITY
    eval_data = layer_drop_data or data
    if layer_drop and cfg.num_layers < 2:
        raise ValueError("layer-drop importance (layer_metric perplexity) needs at least 2 layers")
    passes = [_tokens(data)] + ([_tokens(eval_data)] * (1 + cfg.num_layers) if layer_drop else [])
    progress = _Progress(passes, config.progress)
    model.eval()
    model.reset_subnet()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    L = cfg.num_layers
    device = compute_device()
    ffn = _Accumulator(L, cfg.ffn_hidden_size // tp, device)
    attn = _Accumulator(L, cfg.num_attention_heads * cfg.kv_channels // tp, device)
    hidden = _Accumulator(1, cfg.hidden_size, device)
    cosine = torch.zeros(L, dtype=torch.float64, device=device)
    counts = {"tokens": 0.0, "hidden": 0.0}
    handles = []

    def norm_hook(module, args, output):
        hidden.add(0, output)
        counts["hidden"] += output.numel() / output.shape[-1]

    def layer_hooks(layer):
        row = layer.layer_number - 1

        def fc2(module, args):
            ffn.add(row, args[0])  # [s, b, ffn/tp]

        def proj(module, args):
            attn.add(row, args[0])  # [s, b, heads*d/tp]

        def block(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]  # [s, b, h]
            y = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)  # [s, b]
            cosine[row] += (1.0 - cos).sum()
            if row == layer_rows[0]:
                counts["tokens"] += cos.numel()

        return [layer.mlp.linear_fc2.register_forward_pre_hook(fc2),
                layer.self_attention.linear_proj.register_forward_pre_hook(proj),
                layer.register_forward_hook(block, with_kwargs=True)]

    layer_rows = [layer.layer_number - 1 for layer in model.decoder.layers]
    try:
        for module in model.modules():
            if isinstance(module, MaskedNorm):
                handles.append(module.register_forward_hook(norm_hook))
        for layer in model.decoder.layers:
            handles += layer_hooks(layer)
        _run_forward(model, data, progress)
    finally:
        for handle in handles:
            handle.remove()

    tensors: dict[str, torch.Tensor] = {}
    for name, acc in (("ffn", ffn), ("attn", attn)):
        for stat in STATS:
            full = _gather_tp(acc.stats[stat])
            op = dist.ReduceOp.MAX if stat == "max_abs" else dist.ReduceOp.SUM
            tensors[f"{name}.{stat}"] = _reduce_pp_dp(full, op).cpu()
    for stat in STATS:
        op = dist.ReduceOp.MAX if stat == "max_abs" else dist.ReduceOp.SUM
        tensors[f"hidden.{stat}"] = _reduce_pp_dp(hidden.stats[stat][0], op).cpu()
    scalars = _reduce_pp_dp(torch.tensor([counts["hidden"], 0.0], dtype=torch.float64, device=device), dist.ReduceOp.SUM)
    tensors["hidden.count"] = scalars[:1].cpu()
    # tokens: counted on the first layer of each stage; every stage sees the same tokens, so take the DP sum only
    tokens = torch.tensor([counts["tokens"]], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tokens, group=parallel_state.get_data_parallel_group())
    n_tokens = float(tokens.item())
    cosine = _reduce_pp_dp(cosine, dist.ReduceOp.SUM).cpu()
    tensors["layer.cosine"] = cosine / max(n_tokens, 1.0)

    meta = {"calibration_batches": data.global_batches, "seq_length": data.seq_length,
            "micro_batch_size": data.micro_batch_size, "layer_metric": LayerMetric(config.layer_metric).value}
    flops = {"calibration": forward_flops(cfg, SubnetConfig(), data.seq_length) * passes[0], "layer_drop": 0.0}
    try:
        if layer_drop:
            progress.next_pass()
            base = evaluate_loss(model, cfg, eval_data)
            progress.update(passes[1])
            dropped = []
            for i in range(L):
                progress.next_pass()
                kept = SubnetConfig(layers=[j for j in range(L) if j != i])
                model.set_subnet(kept)
                dropped.append(evaluate_loss(model, cfg, eval_data))
                progress.update(passes[1])
                flops["layer_drop"] += forward_flops(cfg, kept, eval_data.seq_length) * passes[1]  # skipped: not run
            model.reset_subnet()
            flops["layer_drop"] += forward_flops(cfg, SubnetConfig(), eval_data.seq_length) * passes[1]  # the base
            tensors["layer.loss"] = torch.tensor(dropped, dtype=torch.float64)
            tensors["base_loss"] = torch.tensor([base], dtype=torch.float64)
            meta["layer_drop_batches"] = eval_data.global_batches
    finally:
        progress.close()
    meta.update(passes=len(passes), pass_tokens=passes, tokens=sum(passes), flops=sum(flops.values()),
                flops_by_part=flops)
    return ImportanceScores(model=shape_of(cfg), tokens=int(n_tokens), tensors=tensors,
                            aggregation=Aggregation(config.aggregation), meta=meta)
