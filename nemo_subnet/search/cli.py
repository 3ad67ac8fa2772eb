"""`nemo-subnet search`: find the best sub-network under a parameter budget (see docs/search.md).

Flags generated from ``SearchConfig`` (the long-standing short names kept: ``--budget``, ``--tolerance``,
``--population``, ``--val-batches``, ``--seq-length``, ``--micro-batch-size``, ``--compile``); ``--config FILE``
reads the same settings from YAML (what the pipeline's search stage hands it).
"""

from __future__ import annotations

import argparse

FLAG_ALIASES = {
    "budget.target": ["--budget"], "budget.tolerance": ["--tolerance"], "strategy_config.population": ["--population"],
    "eval.batches": ["--val-batches"], "eval.seq_length": ["--seq-length"],
    "eval.micro_batch_size": ["--micro-batch-size"], "eval.compile": ["--compile"],
}


def register(subparsers) -> None:
    from nemo_subnet.config import add_config_arguments
    from nemo_subnet.search.runner import SearchConfig

    p = subparsers.add_parser("search", help="search the best sub-network under a parameter budget",
                              description="Random, evolutionary or importance-proxy search over a YAML search space; "
                                          "objective: validation perplexity of the masked super-network. Resumes "
                                          "a killed run in --out without re-evaluating finished candidates. "
                                          "--budget is a fraction of the model (<= 1) or a count (160M).")
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
        print(f"best of {len(result.records)} candidates ({result.evaluated} evaluated now): perplexity "
              f"{result.best_objective:.4f}, {result.best_params:,} parameters -> {result.run_dir / 'best.yaml'}")
    return 0
