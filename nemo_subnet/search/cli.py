"""`nemo-subnet search`: find the best sub-network under a parameter budget (see docs/search.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_subnet.importance.scores import LayerMetric


def register(subparsers) -> None:
    from nemo_subnet.search.strategies import StrategyName

    p = subparsers.add_parser("search", help="search the best sub-network under a parameter budget",
                              description="Random, evolutionary or importance-proxy search over a YAML search space; "
                                          "objective: validation perplexity of the masked super-network. Resumes "
                                          "a killed run in --out without re-evaluating finished candidates.")
    p.add_argument("--ckpt", required=True, type=Path, help="super-network checkpoint directory")
    p.add_argument("--data", required=True, type=Path, help="directory made by `nemo-subnet data prepare` (valid split)")
    p.add_argument("--space", required=True, type=Path, help="search space YAML")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumed when it holds the same search)")
    p.add_argument("--budget", type=float, help="parameters: fraction of the model (<= 1) or a count (> 1)")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative band around the budget (default 0.05)")
    p.add_argument("--strategy", default=StrategyName.EVOLUTIONARY.value,
                   help=f"one of {[s.value for s in StrategyName]} (default evolutionary)")
    p.add_argument("--evaluations", type=int, default=100, help="distinct candidates to evaluate")
    p.add_argument("--scores", type=Path, help="importance scores (`nemo-subnet importance`)")
    p.add_argument("--layer-metric", choices=[m.value for m in LayerMetric], default=LayerMetric.COSINE.value)
    p.add_argument("--population", type=int, default=16, help="evolutionary population")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-batches", type=int, default=8, help="validation micro-batches per candidate (global)")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--compile", action="store_true",
                   help="compile the super-network once in its static-graph mode (no recompilation per candidate)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="discard a previous search in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from nemo_subnet.errors import UserError
    from nemo_subnet.search.runner import EvalConfig, SearchConfig, run_search
    from nemo_subnet.search.space import Budget
    from nemo_subnet.search.strategies import StrategyConfig

    if args.tp < 1 or args.pp < 1:
        raise UserError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}")
    config = SearchConfig(
        ckpt=args.ckpt, data=args.data, out=args.out, space=args.space,
        budget=None if args.budget is None else Budget(args.budget, args.tolerance),
        strategy=args.strategy, evaluations=args.evaluations, seed=args.seed, scores=args.scores,
        layer_metric=LayerMetric(args.layer_metric), strategy_config=StrategyConfig(population=args.population),
        eval=EvalConfig(batches=args.val_batches, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                        compile=args.compile),
        tp=args.tp, pp=args.pp, overwrite=args.overwrite, progress=not args.no_progress, plots=not args.no_plots)
    try:
        result = run_search(config)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # SearchSpaceError, SubnetConfigError included
        raise UserError(str(err)) from None
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"best of {len(result.records)} candidates ({result.evaluated} evaluated now): perplexity "
              f"{result.best_objective:.4f}, {result.best_params:,} parameters -> {result.run_dir / 'best.yaml'}")
    return 0
