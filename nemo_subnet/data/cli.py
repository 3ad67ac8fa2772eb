"""`nemo-subnet data prepare`: the command-line face of :func:`nemo_subnet.data.prepare.prepare_dataset`.

Its flags are generated from ``PrepareConfig`` (one per field; ``--input`` is ``inputs``), and ``--config FILE``
reads the same settings from YAML (what the pipeline's data stage hands it).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from nemo_subnet.config import add_config_arguments
    from nemo_subnet.data.prepare import PrepareConfig

    parser = subparsers.add_parser("data", help="prepare training data (tokenize into Megatron indexed datasets)")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    prepare = commands.add_parser(
        "prepare",
        help="tokenize a corpus into train/valid (and search/test) .bin/.idx files",
        description="Tokenize text / JSONL / parquet files, the embedded 'stdlib' corpus or a hub dataset into "
        "megatron-core indexed datasets with a train/valid split, the tokenizer and a dataset.json. Give exactly "
        "one of --tokenizer DIR, --sentencepiece FILE, --train-tokenizer sentencepiece (with --vocab-size).",
    )
    add_config_arguments(prepare, PrepareConfig, aliases={"inputs": ["--input"]})
    prepare.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from nemo_subnet.config import config_from_arguments
    from nemo_subnet.data.prepare import PrepareConfig, prepare_dataset

    config = config_from_arguments(PrepareConfig, args, required=("inputs", "out"), flag_names={"inputs": "--input"})
    prepared = prepare_dataset(config)
    splits = ", ".join(f"{name} {s.documents} docs / {s.tokens} tokens" for name, s in prepared.splits.items())
    print(f"prepared {prepared.out}: {splits}; vocab {prepared.vocab_size}, eod {prepared.eod}, {prepared.dtype}")
    return 0
