"""``python -m nemo_subnet.pipeline.model_checkpoint TRAIN_CKPT OUT``: a plain model checkpoint from a training one.

A training checkpoint (``<run>/checkpoints/step_*``) carries optimizer state next to the weights; the
stages that only read weights (importance, search, extract, export, distillation teacher) get this smaller
plain checkpoint instead (model.yaml + weights/ + tokenizer/), written atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path


def to_model_checkpoint(train_ckpt: str | Path, out: str | Path) -> None:
    from nemo_subnet.checkpointing import TOKENIZER, atomic_directory, load_model, save_model
    from nemo_subnet.runtime import runtime_scope

    train_ckpt = Path(train_ckpt)
    with runtime_scope(tp=1, pp=1):
        cfg, model = load_model(train_ckpt)
        tokenizer = train_ckpt / TOKENIZER
        with atomic_directory(out, overwrite=True) as tmp:
            save_model(model, cfg, tmp, tokenizer_dir=tokenizer if tokenizer.is_dir() else None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    to_model_checkpoint(*argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
