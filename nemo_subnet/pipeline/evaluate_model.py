"""``python -m nemo_subnet.pipeline.evaluate_model CKPT RUN_YAML OUT_JSON``: a model's valid and test perplexity
on exactly the samples a training run evaluates.

An imported teacher was never trained here, so it has no curve to read its numbers from; the report compares it
with the students on their own yardstick: the first ``logging.eval_iters`` micro-batches of the valid split and
the first ``logging.test_iters`` of the test split, drawn with the run's ``data.eval_seed`` (else ``data.seed``)
and ``data.seq_length`` (``importance.evaluation.load_batches`` builds the same megatron datasets the training
loop does). One process at TP=1, PP=1: a teacher that needs more does not fit the hosts this stage is meant for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def evaluate_model(ckpt: str | Path, run) -> dict:
    """{"valid_ppl", "test_ppl", "tokens"} of the model in ``ckpt`` on the samples the ``TrainConfig`` ``run``
    evaluates (a split it does not evaluate is left out)."""
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.importance.evaluation import evaluate_loss, load_batches, perplexity
    from nemo_subnet.runtime import runtime_scope

    data = run.data
    out = {}
    with runtime_scope(tp=1, pp=1, seed=0):
        cfg, model = load_model(ckpt)
        for split, iters in (("valid", run.logging.eval_iters), ("test", run.logging.test_iters)):
            if iters:
                batches = load_batches(data.path, cfg, split=split, num_batches=iters, seq_length=data.seq_length,
                                       micro_batch_size=data.micro_batch_size,
                                       seed=data.seed if data.eval_seed is None else data.eval_seed)
                out[f"{split}_ppl"] = perplexity(evaluate_loss(model.eval(), cfg, batches))
    return out


def main(argv: list[str] | None = None) -> int:
    from nemo_subnet import config as configs
    from nemo_subnet.files import write_text_atomic
    from nemo_subnet.training.config import TrainConfig

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    ckpt, run_yaml, out = argv
    result = evaluate_model(ckpt, configs.load(TrainConfig, run_yaml))
    write_text_atomic(Path(out), json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
