"""`nemo-subnet search`: find the best sub-network under a parameter budget (see docs/search.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_subnet.importance.scores import LayerMetric


def _fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated budgets such as 0.25,0.33,0.5, got {text!r}")
    return values


def register(subparsers) -> None:
    from nemo_subnet.search.objective import EvalForward
    from nemo_subnet.search.fidelity import DEFAULT_REDUCTION, DEFAULT_RUNGS
    from nemo_subnet.search.strategies import StrategyName

    p = subparsers.add_parser("search", help="search the best sub-network under a parameter budget",
                              description="Random, evolutionary or importance-proxy search over a YAML search space; "
                                          "objective: validation perplexity of the sub-network (the extracted "
                                          "student's), evaluated at its own size, with successive halving over "
                                          "evaluation tokens. Resumes a killed run in --out without re-evaluating "
                                          "finished candidates.")
    p.add_argument("--ckpt", required=True, type=Path, help="super-network checkpoint directory")
    p.add_argument("--data", required=True, type=Path, help="directory made by `nemo-subnet data prepare` (valid split)")
    p.add_argument("--space", required=True, type=Path, help="search space YAML")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumed when it holds the same search)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, help="parameters: fraction of the model (<= 1) or a count (> 1)")
    budget.add_argument("--budgets", type=_fractions, metavar="B1,B2,...",
                        help="a family of budgets in one search (e.g. 0.25,0.33,0.5): best_<budget>.yaml per budget")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative band around the budget(s) (default 0.05)")
    p.add_argument("--strategy", default=StrategyName.EVOLUTIONARY.value,
                   help=f"one of {[s.value for s in StrategyName]} (default evolutionary)")
    p.add_argument("--evaluations", type=int, default=100, help="distinct candidates to evaluate")
    p.add_argument("--scores", type=Path, help="importance scores (`nemo-subnet importance`)")
    p.add_argument("--layer-metric", choices=[m.value for m in LayerMetric], default=LayerMetric.COSINE.value)
    p.add_argument("--population", type=int, default=16, help="evolutionary population")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-batches", type=int, default=8,
                   help="validation micro-batches of a full-fidelity evaluation (global)")
    p.add_argument("--rungs", type=int, default=DEFAULT_RUNGS,
                   help=f"successive-halving rungs over evaluation tokens; 1 = off, every candidate on all "
                        f"--val-batches (default {DEFAULT_RUNGS})")
    p.add_argument("--reduction", type=int, default=DEFAULT_REDUCTION,
                   help=f"tokens ratio between rungs; the best 1/reduction of a rung are promoted "
                        f"(default {DEFAULT_REDUCTION})")
    p.add_argument("--forward", choices=[f.value for f in EvalForward], default=None,
                   help="compact: each candidate at its own size (default); masked: the masked super-network "
                        "(default with --compile)")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--compile", action="store_true",
                   help="compile the masked super-network once in its static-graph mode (no recompilation per "
                        "candidate; evaluates masked)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="discard a previous search in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from nemo_subnet.cli import UserError
    from nemo_subnet.search.objective import EvalForward
    from nemo_subnet.search.runner import EvalConfig, SearchConfig, run_search
    from nemo_subnet.search.space import Budget
    from nemo_subnet.search.strategies import StrategyConfig

    if args.tp < 1 or args.pp < 1:
        raise UserError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}")
    forward = args.forward or (EvalForward.MASKED if args.compile else EvalForward.COMPACT)
    config = SearchConfig(
        ckpt=args.ckpt, data=args.data, out=args.out, space=args.space,
        budget=None if args.budget is None else Budget(args.budget, args.tolerance),
        budgets=None if args.budgets is None else [Budget(b, args.tolerance) for b in args.budgets],
        strategy=args.strategy, evaluations=args.evaluations, seed=args.seed, scores=args.scores,
        layer_metric=LayerMetric(args.layer_metric), strategy_config=StrategyConfig(population=args.population),
        eval=EvalConfig(batches=args.val_batches, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                        forward=EvalForward(forward), compile=args.compile, rungs=args.rungs, reduction=args.reduction),
        tp=args.tp, pp=args.pp, overwrite=args.overwrite, progress=not args.no_progress, plots=not args.no_plots)
    try:
        result = run_search(config)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # SearchSpaceError, SubnetConfigError included
        raise UserError(str(err)) from None
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        import json

        summary = json.loads((result.run_dir / "summary.json").read_text())
        print(f"{len(result.records)} candidates, {summary['evaluations']} evaluations ({result.evaluated} run now), "
              f"{summary['tokens']:,} tokens, {summary['flops']:.3e} FLOPs")
        for b in result.budgets:
            target = "" if b["target"] is None else f"budget {b['target']:g}: "
            print(f"{target}best of {b['candidates']} candidates: perplexity {b['objective']:.4f}, {b['params']:,} "
                  f"parameters -> {result.run_dir / b['file']}")
    return 0
