"""`nemo-subnet import-hf` and `nemo-subnet export-hf`."""

from __future__ import annotations

import argparse

_USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, KeyError)


def register(subparsers) -> None:
    p = subparsers.add_parser("import-hf", help="convert a Hugging Face model directory or a GGUF file into a nemo-subnet "
                                                "checkpoint",
                              description="Run plainly for a TP=1 conversion, or under torchrun with tp*pp ranks to "
                                          "convert shard by shard. The checkpoint loads at any TP/PP. A .gguf file is "
                                          "dequantized to fp32 by transformers first (its tokenizer is carried too).")
    p.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors) or a .gguf file")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size to validate and convert at")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to validate and convert at")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_import_hf)

    p = subparsers.add_parser("export-hf", help="write a nemo-subnet checkpoint as a Hugging Face model directory")
    p.add_argument("--ckpt", required=True, help="nemo-subnet checkpoint directory")
    p.add_argument("--out", required=True, help="HF directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_export_hf)


def _user_error(err: Exception):
    from nemo_subnet.errors import UserError

    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return UserError(message)


def _import_hf(args: argparse.Namespace) -> int:
    from nemo_subnet.runtime import runtime_scope
    from nemo_subnet.runtime.distributed import detect_launch_env

    if args.tp < 1 or args.pp < 1:
        raise _user_error(ValueError(f"--tp and --pp must be >= 1, got {args.tp} and {args.pp}"))
    world = detect_launch_env().world_size
    if world not in (1, args.tp * args.pp):
        raise _user_error(ValueError(f"launched on {world} ranks; import-hf runs on 1 rank or on tp*pp = {args.tp * args.pp}"))
    try:
        from nemo_subnet.conversion.hf_import import import_hf

        with runtime_scope(tp=args.tp if world > 1 else 1, pp=args.pp if world > 1 else 1) as runtime:
            cfg = import_hf(args.hf, args.out, tp=args.tp, pp=args.pp, overwrite=args.overwrite)
    except _USER_ERRORS as err:
        raise _user_error(err) from None
    if runtime.is_main:
        print(f"imported {cfg.family.value}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size} "
              f"(padded {cfg.padded_vocab_size}), {cfg.dtype} -> {args.out}")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from nemo_subnet.runtime import runtime_scope

    try:
        from nemo_subnet.conversion.hf_export import export_hf

        with runtime_scope(tp=1, pp=1):
            export_hf(args.ckpt, args.out, overwrite=args.overwrite)
    except _USER_ERRORS as err:
        raise _user_error(err) from None
    print(f"exported {args.ckpt} -> {args.out}")
    return 0
