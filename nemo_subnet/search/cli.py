"""`nemo-subnet search`: find the best sub-network under a parameter budget (see docs/search.md).

Flags generated from ``SearchConfig`` (the long-standing short names kept: ``--budget``, ``--tolerance``,
``--population``, ``--val-batches``, ``--seq-length``, ``--micro-batch-size``, ``--compile``, ``--forward``,
``--rungs``, ``--reduction``, ``--budgets`` for ``budgets.targets``); ``--config FILE`` reads the same settings
from YAML (what the pipeline's search stage hands it).
"""

from __future__ import annotations

import argparse

FLAG_ALIASES = {
    "budget.target": ["--budget"], "budget.tolerance": ["--tolerance"], "strategy_config.population": ["--population"],
    "eval.batches": ["--val-batches"], "eval.seq_length": ["--seq-length"],
    "eval.micro_batch_size": ["--micro-batch-size"], "eval.compile": ["--compile"], "eval.forward": ["--forward"],
    "eval.rungs": ["--rungs"], "eval.reduction": ["--reduction"], "budgets.targets": ["--budgets"],
}


def register(subparsers) -> None:
    from nemo_subnet.config import add_config_arguments
    from nemo_subnet.search.runner import SearchConfig

    p = subparsers.add_parser("search", help="search the best sub-network under a parameter budget",
                              description="Random, evolutionary or importance-proxy search over a YAML search space; "
                                          "objective: validation perplexity of the sub-network (the extracted "
                                          "student's), evaluated at its own size, with successive halving over "
                                          "evaluation tokens. Resumes a killed run in --out without re-evaluating "
                                          "finished candidates. --budget is a fraction of the model (<= 1) or a "
                                          "count (160M); --budgets 0.25 0.33 0.5 searches a family at once.")
    add_config_arguments(p, SearchConfig, aliases=FLAG_ALIASES)
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from nemo_subnet.config import config_from_arguments
    from nemo_subnet.search.runner import SearchConfig

    config = config_from_arguments(SearchConfig, args, required=("ckpt", "data", "out"))
    return run_search_command(config)


def run_search_command(config) -> int:
    from nemo_subnet.errors import UserError
    from nemo_subnet.search.runner import run_search

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
