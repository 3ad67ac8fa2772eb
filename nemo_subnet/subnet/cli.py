"""`nemo-subnet extract`: cut a sub-network out of a checkpoint into a standalone checkpoint.

Flags generated from ``ExtractConfig``; ``--config FILE`` reads the same settings (the pipeline's extract stage).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from nemo_subnet.config import add_config_arguments
    from nemo_subnet.subnet.extract import ExtractConfig

    p = subparsers.add_parser("extract", help="slice a sub-network into a standalone checkpoint",
                              description="The sub-network YAML gives hidden / layers / per-layer query_groups, "
                                          "heads_per_group, ffn as counts (first k) or index lists.")
    add_config_arguments(p, ExtractConfig)
    p.set_defaults(func=_extract)


def _extract(args: argparse.Namespace) -> int:
    from nemo_subnet.config import config_from_arguments
    from nemo_subnet.errors import UserError
    from nemo_subnet.models.counting import count_parameters
    from nemo_subnet.runtime import runtime_scope
    from nemo_subnet.subnet.extract import ExtractConfig, extract_checkpoint

    c = config_from_arguments(ExtractConfig, args, required=("ckpt", "subnet", "out"))
    try:
        with runtime_scope(tp=1, pp=1):
            cfg = extract_checkpoint(c.ckpt, c.subnet, c.out, tp=c.tp, pp=c.pp, overwrite=c.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        raise UserError(str(err)) from None
    kind = "layer-wise" if cfg.is_layerwise else "uniform"
    print(f"extracted {kind} sub-network: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"{count_parameters(cfg):,} parameters -> {c.out}")
    return 0
