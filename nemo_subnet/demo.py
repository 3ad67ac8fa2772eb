"""`make demo`: the embedded-default search-then-pretrain run, end to end on a CPU laptop (about 15 min, 2 cores).

Nothing is downloaded. The corpus is this Python's standard library; a sentencepiece tokenizer is trained
on it; a ~3.5M-parameter Llama-style teacher is pretrained here; importance scoring and an evolutionary
search pick the best ~1/3-size sub-network of it by perplexity on a held-out search split; the sub-network
is extracted and pretrained with knowledge distillation from the teacher, next to a random-init student of
the same shape on the same tokens (both curves on the valid split from step 0, the init itself; the final
numbers on the test split, measured once; the search never sees either); the KD student is exported to
Hugging Face format and generates with transformers;
``<out>/report/report.md`` holds the tables and plots. First, as the foundation check, every supported HF
family goes HF -> Megatron -> HF on tiny random models (``<out>/parity.json``).

Every stage shows progress and is reused by the next ``make demo`` when its output is complete for the
same settings (see nemo_subnet/pipeline/runner.py); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch


def demo_config(out: str):
    """The embedded default, sized from measured CPU speeds (2 threads: 1.45M params ~ 4000 tokens/s)."""
    from nemo_subnet.config import updated
    from nemo_subnet.pipeline.config import PipelineConfig, TeacherModel, default_train

    return updated(PipelineConfig(), {
        "out_dir": out,
        "teacher": TeacherModel(family="llama", hidden_size=192, num_layers=6, num_attention_heads=6,
                                num_query_groups=3, ffn_hidden_size=512, max_position_embeddings=256),
        # three disjoint held-out splits: search (importance + search), valid (the curves), test (reported once)
        "data.vocab_size": 2048, "data.max_bytes": 4_000_000,
        "data.valid_fraction": 0.05, "data.search_fraction": 0.05, "data.test_fraction": 0.05,
        # ~410k tokens: a few minutes; the teacher only has to be clearly better than what a student gets
        "teacher_train": updated(default_train(200, seq_length=256), {
            "optimizer.lr": 2e-3, "optimizer.min_lr": 2e-4, "schedule.warmup_steps": 20, "logging.eval_every": 50,
            "logging.eval_iters": 4}),
        "importance.batches": 8, "importance.seq_length": 256,
        "search.evaluations": 40, "search.strategy_config.population": 10, "search.eval.batches": 4,
        "search.eval.seq_length": 256,
        # both students: 120 steps x 2048 tokens, the same samples in the same order
        "student_train": updated(default_train(120, seq_length=256), {
            "optimizer.lr": 2e-3, "optimizer.min_lr": 2e-4, "schedule.warmup_steps": 10, "logging.eval_every": 20,
            "logging.eval_iters": 4, "logging.test_iters": 8}),
        "generate_prompt": "def read_config(path):\n",
    })


def _parity_for(variant: str, out: Path) -> dict:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.models.tiny_hf import save_hf_model

    start = time.perf_counter()
    hf_dir, ckpt_dir, exported_dir = out / "hf" / variant, out / "checkpoints" / variant, out / "exported" / variant
    hf_model = save_hf_model(variant, hf_dir, seed=0)
    import_hf(hf_dir, ckpt_dir, overwrite=True)
    cfg, model = load_model(ckpt_dir)
    tokens = torch.randint(0, cfg.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits_diff = (forward_logits(model, cfg, tokens) - hf_model(tokens).logits).abs().max().item()
    export_hf(ckpt_dir, exported_dir, overwrite=True)
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(exported_dir / "model.safetensors")
    bitwise = sorted(original) == sorted(exported) and all(torch.equal(original[k], exported[k]) for k in original)
    reloaded = AutoModelForCausalLM.from_pretrained(exported_dir).eval()
    prompt, kwargs = tokens[:2, :8], dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    same_generation = torch.equal(reloaded.generate(prompt, **kwargs), hf_model.generate(prompt, **kwargs))
    return {"variant": variant, "family": cfg.family.value, "params": sum(p.numel() for p in hf_model.parameters()),
            "max_abs_logit_diff": logits_diff, "round_trip_bitwise": bitwise, "generate_equal": same_generation,
            "seconds": round(time.perf_counter() - start, 2)}


def parity_check(out: Path, console) -> bool:
    """HF <-> Megatron round trip of every family on tiny random models; reused when parity.json exists."""
    from rich.markup import escape
    from rich.table import Table

    from nemo_subnet.files import write_text_atomic
    from nemo_subnet.models.tiny_hf import VARIANTS
    from nemo_subnet.runtime import runtime_scope

    path = out / "parity.json"
    if path.is_file():
        rows = json.loads(path.read_text())
        console.print(escape(f"[parity] reusing {path}"), style="bold cyan")
    else:
        rows = []
        with runtime_scope(tp=1, pp=1, seed=0), console.status("converting") as status:
            for variant in VARIANTS:
                status.update(f"[parity] HF -> Megatron -> HF: {variant}")
                rows.append(_parity_for(variant, out / "parity"))
        write_text_atomic(path, json.dumps(rows, indent=2))
    table = Table(title="HF <-> Megatron parity (fp32, CPU)")
    for column in ("variant", "params", "max |logit diff|", "round trip bitwise", "generate() equal", "s"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["variant"], f"{r['params']:,}", f"{r['max_abs_logit_diff']:.2e}", str(r["round_trip_bitwise"]),
                      str(r["generate_equal"]), f"{r['seconds']:.1f}")
    console.print(table)
    return all(r["max_abs_logit_diff"] <= 1e-4 and r["round_trip_bitwise"] and r["generate_equal"] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--fresh", action="store_true", help="remove --out first instead of reusing finished stages")
    parser.add_argument("--skip-parity", action="store_true", help="skip the HF <-> Megatron conversion check")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="pipeline config overrides, e.g. student_train.schedule.train_steps=60 (see "
                        "nemo_subnet/pipeline/config.py)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from rich.console import Console
    from rich.markup import escape

    from nemo_subnet.errors import UserError
    from nemo_subnet.pipeline import run_pipeline
    from nemo_subnet.pipeline.config import apply_overrides
    from nemo_subnet.pipeline.runner import StageError

    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    start = time.perf_counter()
    parity_ok = True if args.skip_parity else parity_check(out, console)
    try:
        config = apply_overrides(demo_config(str(out)), args.overrides)
        run_pipeline(config, log=lambda msg: console.print(escape(msg), style="bold cyan"))
    except (UserError, StageError) as err:
        console.print(f"[bold red]demo failed: {err}")
        return 1
    report = out / "report" / "report.md"
    summary = json.loads((out / ".stages" / "report.done.json").read_text())["summary"]
    console.rule("report")
    text = report.read_text()
    console.print(escape(text[text.index("## Student pretraining"):text.index("![students]")]))
    ok = parity_ok and summary["kd_ahead"]
    console.print(f"report: {report}  ({time.perf_counter() - start:.0f} s)  "
                  f"[{'bold green' if ok else 'bold red'}]{'sub-network init + KD ahead of random init' if summary['kd_ahead'] else 'KD student NOT ahead'}"
                  f"{'' if parity_ok else '; PARITY CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
