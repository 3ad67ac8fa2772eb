"""`nemo-subnet importance`: activation importance scores of a checkpoint from calibration batches."""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_subnet.importance.scores import Aggregation, LayerMetric


def register(subparsers) -> None:
    p = subparsers.add_parser("importance", help="activation importance of neurons, heads, groups, channels, layers",
                              description="Forward-only calibration pass over the full super-network; writes one "
                                          "safetensors file that `nemo-subnet search --scores` and selection reuse.")
    p.add_argument("--ckpt", required=True, type=Path, help="model checkpoint directory")
    p.add_argument("--data", required=True, type=Path, help="directory made by `nemo-subnet data prepare`")
    p.add_argument("--out", required=True, type=Path, help="scores file to write (.safetensors)")
    p.add_argument("--batches", type=int, default=8, help="calibration micro-batches (global, over DP ranks)")
    p.add_argument("--split", choices=["train", "valid"], default="train", help="calibration split (default: train)")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--aggregation", choices=[a.value for a in Aggregation], default=Aggregation.L2.value,
                   help="default aggregation stored with the scores (all stay computable)")
    p.add_argument("--layer-metric", choices=[m.value for m in LayerMetric], default=LayerMetric.COSINE.value,
                   help="the layer metric the search will use (its --layer-metric): cosine (default) comes from the "
                        "calibration pass; perplexity adds 1 + L layer-drop evaluations")
    p.add_argument("--layer-drop-batches", type=int, default=None,
                   help="validation micro-batches per layer-drop evaluation (--layer-metric perplexity; default: "
                        "--batches, valid split)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--seed", type=int, default=1234, help="seed of the dataset shuffles")
    p.set_defaults(func=_importance)


def _importance(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from nemo_subnet.cli import UserError
    from nemo_subnet.importance.collect import ImportanceConfig, compute_importance
    from nemo_subnet.importance.evaluation import load_batches, load_supernet
    from nemo_subnet.runtime import runtime_scope

    if args.tp < 1 or args.pp < 1:
        raise UserError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}")
    try:
        with runtime_scope(tp=args.tp, pp=args.pp, seed=args.seed) as runtime:
            cfg, model = load_supernet(args.ckpt)
            common = dict(seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, seed=args.seed)
            data = load_batches(args.data, cfg, split=args.split, num_batches=args.batches, **common)
            metric = LayerMetric(args.layer_metric)
            drop_data = None
            if metric is LayerMetric.PERPLEXITY:
                drop_data = load_batches(args.data, cfg, split="valid",
                                         num_batches=args.layer_drop_batches or args.batches, **common)
            config = ImportanceConfig(Aggregation(args.aggregation), layer_metric=metric, progress=not args.no_progress)
            scores = compute_importance(model, cfg, data, config, layer_drop_data=drop_data)
            scores.meta["checkpoint"] = str(args.ckpt.resolve())
            if runtime.is_main:
                scores.save(args.out)
            if dist.is_initialized():
                dist.barrier()
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    if runtime.is_main:
        meta = scores.meta
        print(f"importance of {cfg.num_layers} layers: {meta['passes']} forward pass(es) ({meta['passes'] - 1} "
              f"layer-drop), {meta['tokens']:,} tokens, {meta['flops']:.3e} FLOPs -> {args.out}")
    return 0
