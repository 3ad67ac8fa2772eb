"""``nemo-subnet study``: the method's claims measured on the embedded corpus (see docs/study.md)."""

from __future__ import annotations


def register(subparsers) -> None:
    from nemo_subnet.study.__main__ import add_arguments, run

    p = subparsers.add_parser("study", help="init / search / KD ablations with held-out test splits and compute counted",
                              description="Train every study row (baselines, initialisations, KD variants, search "
                              "spaces) over seeds and write the report: test perplexity at equal tokens and compute, "
                              "tokens and FLOPs to target. Resumable: finished rows are kept.")
    add_arguments(p)
    p.set_defaults(func=run)
