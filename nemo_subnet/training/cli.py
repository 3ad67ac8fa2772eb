"""`nemo-subnet train` and `nemo-subnet tokens-to-target`.

Exit codes of ``train``: 0 finished (``schedule.train_steps`` reached), 2 bad input (one line), and
``EXIT_PREEMPTED`` (75, EX_TEMPFAIL) when SIGTERM stopped the run after it saved a checkpoint: not finished,
``--resume`` continues it (see nemo_subnet/exit_codes.py for why 75 and not 0 or 143).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nemo_subnet.exit_codes import PREEMPTED as EXIT_PREEMPTED


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="pretrain / distill a student (torchrun- and srun-aware)",
        description="Train a student from a run YAML (see docs/training.md); overrides are dotted key=value "
        "pairs parsed as YAML, e.g. schedule.train_steps=20 distill.temperature=2.0.")
    train.add_argument("--config", required=True, type=Path, help="run YAML")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    train.add_argument("--resume", action="store_true",
                       help="continue from the run directory's newest checkpoint (starts fresh when there is none)")
    train.set_defaults(func=run_train)

    ttt = subparsers.add_parser(
        "tokens-to-target", help="tokens each run needs to reach a target validation perplexity",
        description="Read several runs' metrics.jsonl, interpolate validation perplexity vs tokens linearly, and "
        "write the tokens to reach --target-ppl and their ratios (CSV, JSON, PNG).")
    ttt.add_argument("--runs", nargs="+", required=True, metavar="NAME=DIR", help="runs to compare (first = reference)")
    ttt.add_argument("--target-ppl", required=True, type=float, help="target validation perplexity")
    ttt.add_argument("--out", required=True, type=Path, help="output directory")
    ttt.set_defaults(func=run_tokens_to_target)


def run_train(args: argparse.Namespace) -> int:
    from nemo_subnet.runtime import shutdown_runtime
    from nemo_subnet.training.config import TrainConfig
    from nemo_subnet.training.loop import TrainingError, train

    from nemo_subnet.training.checkpoint import start_checkpoint_writer_helper

    config = TrainConfig.load(args.config, args.overrides)
    start_checkpoint_writer_helper()
    try:
        result = train(config, resume=args.resume)
    except TrainingError as err:
        from nemo_subnet.errors import UserError

        raise UserError(str(err)) from None
    finally:
        shutdown_runtime()
    metrics = result.final_metrics
    summary = f"step {result.step}, {result.tokens} tokens, {result.status}"
    if "valid_ppl" in metrics:
        summary += f", valid loss {metrics['valid_loss']:.4f} (ppl {metrics['valid_ppl']:.2f})"
    print(f"train: {summary}; checkpoint {result.last_checkpoint}", flush=True)
    if result.status == "preempted":
        print(f"train: stopped by SIGTERM before step {config.schedule.train_steps}; not finished — resume with "
              f"--resume (exit code {EXIT_PREEMPTED})", flush=True)
        return EXIT_PREEMPTED
    return 0


def run_tokens_to_target(args: argparse.Namespace) -> int:
    from nemo_subnet.errors import UserError
    from nemo_subnet.training.tokens_to_target import parse_runs, tokens_to_target

    table = tokens_to_target(parse_runs(args.runs), args.target_ppl, args.out)
    for row in table:
        tokens = "not reached" if row["tokens"] is None else f"{row['tokens']:,.0f}"
        ratio = "" if row["ratio"] is None else f"  ({row['ratio']:.2f}x fewer than {table[0]['run']})"
        print(f"{row['run']:>24}: {tokens}{ratio}")
    if all(row["tokens"] is None for row in table):
        raise UserError(f"no run reached validation perplexity {args.target_ppl} (table written to {args.out})")
    return 0
