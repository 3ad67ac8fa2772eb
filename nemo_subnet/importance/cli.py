"""`nemo-subnet importance`: activation importance scores of a checkpoint from calibration batches.

Flags generated from ``ImportanceConfig`` (``--layer-metric``, ``--batches``, ...); ``--config FILE`` reads the
same settings from YAML (what the pipeline's importance stage hands it).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from nemo_subnet.config import add_config_arguments
    from nemo_subnet.importance.collect import ImportanceConfig

    p = subparsers.add_parser("importance", help="activation importance of neurons, heads, groups, channels, layers",
                              description="Forward-only calibration pass over the full super-network; writes one "
                                          "safetensors file that `nemo-subnet search --scores` and selection reuse.")
    add_config_arguments(p, ImportanceConfig)
    p.set_defaults(func=_importance)


def _importance(args: argparse.Namespace) -> int:
    from nemo_subnet.config import config_from_arguments
    from nemo_subnet.importance.collect import ImportanceConfig

    config = config_from_arguments(ImportanceConfig, args, required=("ckpt", "data", "out"))
    return run_importance(config)


def run_importance(config) -> int:
    import torch.distributed as dist

    from nemo_subnet.errors import UserError
    from nemo_subnet.importance.collect import compute_importance
    from nemo_subnet.importance.evaluation import load_batches, load_supernet
    from nemo_subnet.importance.scores import LayerMetric
    from nemo_subnet.runtime import runtime_scope

    try:
        with runtime_scope(tp=config.tp, pp=config.pp, seed=config.seed) as runtime:
            cfg, model = load_supernet(config.ckpt)
            common = dict(seq_length=config.seq_length, micro_batch_size=config.micro_batch_size, seed=config.seed)
            data = load_batches(config.data, cfg, split=config.split, num_batches=config.batches, **common)
            drop_data = None
            if LayerMetric(config.layer_metric) is LayerMetric.PERPLEXITY:  # the only reader of layer-drop losses
                drop_data = load_batches(config.data, cfg, split="valid",
                                         num_batches=config.layer_drop_batches or config.batches, **common)
            scores = compute_importance(model, cfg, data, config, layer_drop_data=drop_data)
            scores.meta["checkpoint"] = str(config.ckpt.resolve())
            if runtime.is_main:
                scores.save(config.out)
            if dist.is_initialized():
                dist.barrier()
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    if runtime.is_main:
        meta = scores.meta
        print(f"importance of {cfg.num_layers} layers: {meta['passes']} forward pass(es) ({meta['passes'] - 1} "
              f"layer-drop), {meta['tokens']:,} tokens, {meta['flops']:.3e} FLOPs -> {config.out}")
    return 0
