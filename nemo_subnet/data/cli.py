"""`nemo-subnet data prepare`: the command-line face of :func:`nemo_subnet.data.prepare.prepare_dataset`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="prepare training data (tokenize into Megatron indexed datasets)")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    prepare = commands.add_parser(
        "prepare",
        help="tokenize a corpus into train/valid (and search/test) .bin/.idx files",
        description="Tokenize text / JSONL / parquet files, the embedded 'stdlib' corpus or a hub dataset into "
        "megatron-core indexed datasets with a train/valid split, the tokenizer and a dataset.json.",
    )
    prepare.add_argument("--input", nargs="+", required=True, metavar="PATH",
                         help="files or directories (.txt, .jsonl, .json, .parquet), 'stdlib', or a hub dataset name")
    prepare.add_argument("--out", required=True, type=Path, help="output directory (written atomically)")
    which = prepare.add_mutually_exclusive_group(required=True)
    which.add_argument("--tokenizer", metavar="DIR", help="local Hugging Face tokenizer directory, or a .gguf file (its tokenizer)")
    which.add_argument("--sentencepiece", metavar="FILE", help="sentencepiece .model file")
    which.add_argument("--train-tokenizer", choices=["sentencepiece"], help="train a tokenizer on the train split")
    prepare.add_argument("--vocab-size", type=int, help="vocabulary size of the trained tokenizer")
    prepare.add_argument("--tokenizer-train-bytes", type=int, default=32_000_000,
                         help="train the tokenizer on at most this many bytes of text (default: %(default)s)")
    prepare.add_argument("--text-key", default="text", help="JSON field / parquet column with the text (default: text)")
    prepare.add_argument("--txt-per-line", action="store_true", help="one document per line of .txt files")
    prepare.add_argument("--max-docs", type=int, help="keep only the first N documents")
    prepare.add_argument("--max-bytes", type=int, help="keep only the first documents up to about N bytes")
    prepare.add_argument("--valid-fraction", type=float, default=0.05, help="share of documents for validation")
    prepare.add_argument("--search-fraction", type=float, default=0.0,
                         help="share of documents for a 'search' split (importance calibration, sub-network search)")
    prepare.add_argument("--test-fraction", type=float, default=0.0,
                         help="share of documents for a 'test' split (the final number, reported once)")
    prepare.add_argument("--seed", type=int, default=1234, help="seed of the split and tokenizer training")
    prepare.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from nemo_subnet.data.prepare import PrepareConfig, prepare_dataset

    prepared = prepare_dataset(PrepareConfig(
        inputs=args.input, out=args.out, tokenizer=args.tokenizer, sentencepiece=args.sentencepiece,
        train_tokenizer=args.train_tokenizer, vocab_size=args.vocab_size,
        tokenizer_train_bytes=args.tokenizer_train_bytes, text_key=args.text_key, txt_per_line=args.txt_per_line,
        max_docs=args.max_docs, max_bytes=args.max_bytes, valid_fraction=args.valid_fraction,
        search_fraction=args.search_fraction, test_fraction=args.test_fraction, seed=args.seed,
        overwrite=args.overwrite, progress=not args.no_progress,
    ))
    splits = ", ".join(f"{name} {s.documents} docs / {s.tokens} tokens" for name, s in prepared.splits.items())
    print(f"prepared {prepared.out}: {splits}; vocab {prepared.vocab_size}, eod {prepared.eod}, {prepared.dtype}")
    return 0
