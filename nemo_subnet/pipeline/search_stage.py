"""The search stage: ``nemo-subnet search`` over sub-networks of the teacher under a parameter budget.

Writes the search space to ``<out>/search/space.yaml`` and runs the search into ``<out>/search``:
``best.yaml`` (what ``extract`` slices), ``candidates.jsonl`` (every evaluated sub-network with its
parameters and perplexity on the search split, for the report), ``summary.json``, plots. The objective reads
only the search split (``stages.search_data``), never the valid or test splits the students are measured on.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nemo_subnet.files import write_text_atomic
from nemo_subnet.pipeline.runner import StageContext

MICRO_BATCH = 4


def run_search_stage(ctx: StageContext, teacher_ckpt: Path) -> dict:
    c, s = ctx.config, ctx.config.search
    ctx.dir.mkdir(parents=True, exist_ok=True)
    space = ctx.dir / "space.yaml"
    # every rank of the stage writes the same space; atomically, so no rank's search reads a half-written file
    write_text_atomic(space, yaml.safe_dump({"granularity": s.granularity, "ordering": "importance",
                                             "round_to": s.round_to}))
    from nemo_subnet.pipeline.stages import search_data

    ctx.cli("search", "--ckpt", teacher_ckpt, "--data", search_data(ctx.out), "--space", space, "--out", ctx.dir,
            "--budget", s.param_fraction, "--tolerance", s.tolerance, "--strategy", s.strategy,
            "--evaluations", s.evaluations, "--population", s.population, "--seed", s.seed,
            "--scores", ctx.path("importance") / "scores.safetensors", "--val-batches", s.eval_batches,
            "--seq-length", c.teacher_train.seq_length, "--micro-batch-size", MICRO_BATCH, "--tp", s.tp, "--pp", s.pp)
    if not ctx.is_main:  # rank 0 wrote the results; the marker records its summary
        return {}
    best = json.loads((ctx.dir / "summary.json").read_text())["best"]
    evaluated = sum(1 for line in (ctx.dir / "candidates.jsonl").read_text().splitlines() if line.strip())
    return {"best_ppl": best["objective"], "best_params": best["params"], "candidates": evaluated}
