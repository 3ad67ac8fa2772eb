"""`nemo-subnet extract`: cut a sub-network out of a checkpoint into a standalone checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("extract", help="slice a sub-network into a standalone checkpoint",
                              description="The sub-network YAML gives hidden / layers / per-layer query_groups, "
                                          "heads_per_group, ffn as counts (first k) or index lists.")
    p.add_argument("--ckpt", required=True, help="super-network checkpoint directory")
    p.add_argument("--subnet", required=True, help="sub-network config (YAML)")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the result must support")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size the result must support")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_extract)


def _extract(args: argparse.Namespace) -> int:
    from nemo_subnet.errors import UserError
    from nemo_subnet.runtime import runtime_scope
    from nemo_subnet.subnet.extract import extract_checkpoint
    from nemo_subnet.models.counting import count_parameters

    if args.tp < 1 or args.pp < 1:
        raise UserError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}")
    try:
        with runtime_scope(tp=1, pp=1):
            cfg = extract_checkpoint(args.ckpt, args.subnet, args.out, tp=args.tp, pp=args.pp, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        raise UserError(str(err)) from None
    kind = "layer-wise" if cfg.is_layerwise else "uniform"
    print(f"extracted {kind} sub-network: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"{count_parameters(cfg):,} parameters -> {args.out}")
    return 0
