"""The search-then-pretrain stages, each one ``nemo-subnet`` command (or two) on the previous stages' outputs.

::

    data ─▶ teacher ─▶ importance ─▶ search ─▶ extract ─▶ distill ─▶ export ─▶ report
      │        │                                  │    ▲                         ▲
      │        └──────────────── (frozen teacher) ┼────┘                         │
      └───────────────────────────────────────────┴──▶ baseline (random init) ───┘

``teacher`` imports ``hf_model`` when one is given, else pretrains ``config.teacher`` on the data.
Each stage writes ``<out_dir>/<stage>/``; see runner.py for completion markers and reuse.

Data splits (disjoint documents, made once by ``data``): students and the teacher train on ``train``; their
curves are measured on ``valid`` (from step 0, the init itself); importance calibration and the search's
objective read only ``search`` (through the view ``data/search_view``, whose train and valid are both the
search split); every training run measures ``test`` once at its end, and the report's final numbers are those.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nemo_subnet.files import write_text_atomic
from nemo_subnet.pipeline.config import PipelineConfig, TrainSpec
from nemo_subnet.pipeline.runner import Stage, StageContext, StageError


def latest_checkpoint(run_dir: Path) -> Path:
    from nemo_subnet.training.checkpoint import latest_checkpoint as latest

    found = latest(run_dir)
    if found is None:
        raise StageError(f"{run_dir} has no complete checkpoint")
    return found


SEARCH_VIEW = "search_view"
"""``data/search_view``: the search split served as a prepared directory's train and valid splits."""


def search_data(out: Path) -> Path:
    """What importance and search read: only the search split (see the module docstring)."""
    return Path(out) / "data" / SEARCH_VIEW


MODEL = "model"
"""Every model-producing stage leaves a plain model checkpoint in ``<stage>/model``."""


def teacher_checkpoint(ctx: StageContext) -> Path:
    return ctx.path("teacher") / MODEL


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
    return path


def train_run(config: PipelineConfig, spec: TrainSpec, run_dir: Path, data_dir: Path, init: dict,
              teacher: Path | None, *, seed: int | None = None) -> dict:
    """The ``nemo-subnet train`` run YAML (as a dict) of one pipeline training run; the study builds its runs
    with it too. Curves start at step 0 (the init) on the valid split; the test split is measured once."""
    run = {
        "run_dir": str(run_dir), "init": init, "seed": config.seed if seed is None else seed,
        "data": {"path": str(data_dir), "seq_length": spec.seq_length,
                 "micro_batch_size": spec.micro_batch_size, "global_batch_size": spec.global_batch_size},
        "optimizer": {"lr": spec.lr, "min_lr": spec.min_lr, "use_distributed_optimizer": spec.distributed_optimizer},
        "schedule": {"train_steps": spec.steps, "warmup_steps": spec.warmup_steps},
        "checkpoint": {"every_steps": spec.checkpoint_every or max(spec.steps // 4, 1), "keep_last": 1},
        "logging": {"eval_every": spec.eval_every, "eval_iters": spec.eval_iters, "log_every": 1,
                    "eval_at_start": True, "test_iters": spec.test_iters},
        "parallel": {"tp": spec.tp, "pp": spec.pp, "recompute": spec.recompute, "sequence_parallel": spec.sequence_parallel,
                     "overlap_grad_reduce": spec.overlap_grad_reduce, "overlap_param_gather": spec.overlap_param_gather},
    }
    if teacher is not None:
        d = config.distill
        run["distill"] = {"teacher": str(teacher), "alpha_ce": d.alpha_ce, "beta_kd": d.beta_kd,
                          "temperature": d.temperature, "divergence": d.divergence, "beta_jsd": d.beta_jsd,
                          "top_k": d.top_k, "fused_output": d.fused_output}
    return run


def _train(ctx: StageContext, spec: TrainSpec, init: dict, teacher: Path | None) -> dict:
    """Write the run YAML for one training run into <out>/configs and run ``nemo-subnet train``."""
    run = train_run(ctx.config, spec, ctx.dir, ctx.path("data"), init, teacher)
    path = _write_yaml(ctx.out / "configs" / f"{ctx.stage.name}.yaml", run)
    ctx.cli("train", "--config", path, *(["--resume"] if ctx.resume else []))
    if ctx.is_main:  # weights only, for the stages that read this model
        ctx.python("nemo_subnet.pipeline.model_checkpoint", latest_checkpoint(ctx.dir), ctx.dir / MODEL)
    return final_valid(ctx.dir)


def final_valid(run_dir: Path) -> dict:
    """The last validation point and the once-measured test perplexity of a training run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    valid = [r for r in rows if r.get("kind") == "valid"]
    test = [r for r in rows if r.get("kind") == "test"]
    out = {"tokens": valid[-1]["tokens"], "valid_ppl": valid[-1]["valid_ppl"]} if valid else {}
    return {**out, "test_ppl": test[-1]["test_ppl"]} if test else out


# --- stages --------------------------------------------------------------------------------------
def data(ctx: StageContext) -> dict:
    c = ctx.config
    valid, search_, test = c.data.fractions()
    args = ["data", "prepare", "--input", *c.data.inputs, "--out", ctx.dir, "--text-key", c.data.text_key,
            "--valid-fraction", valid, "--search-fraction", search_, "--test-fraction", test, "--seed", c.seed]
    if c.data.max_bytes:
        args += ["--max-bytes", c.data.max_bytes]
    if c.hf_model:
        args += ["--tokenizer", c.hf_model]
    else:
        args += ["--train-tokenizer", "sentencepiece", "--vocab-size", c.data.vocab_size]
    ctx.cli(*args)
    from nemo_subnet.data import make_view

    make_view(ctx.dir, search_data(ctx.out), train="search", valid="search")
    meta = json.loads((ctx.dir / "dataset.json").read_text())
    return {"vocab_size": meta["vocab_size"], "tokens": {k: v["tokens"] for k, v in meta["splits"].items()}}


def teacher(ctx: StageContext) -> dict:
    c = ctx.config
    if c.hf_model:
        ctx.dir.mkdir(parents=True, exist_ok=True)
        ctx.cli("import-hf", "--hf", c.hf_model, "--out", ctx.dir / MODEL)
        return {"checkpoint": str(ctx.dir / MODEL)}
    t = c.teacher
    vocab = json.loads((ctx.path("data") / "dataset.json").read_text())["vocab_size"]
    gated = t.family != "gpt_neox"
    model = dict(family=t.family, vocab_size=vocab, hidden_size=t.hidden_size, num_layers=t.num_layers,
                 num_attention_heads=t.num_attention_heads,
                 num_query_groups=t.num_query_groups if gated else t.num_attention_heads,
                 ffn_hidden_size=t.ffn_hidden_size, kv_channels=t.hidden_size // t.num_attention_heads,
                 max_position_embeddings=t.max_position_embeddings,
                 normalization="RMSNorm" if gated else "LayerNorm", norm_eps=1e-5,
                 activation="silu" if gated else "gelu", gated_mlp=gated, add_bias_linear=not gated,
                 add_qkv_bias=not gated, parallel_residual=not gated,
                 rotary_percent=1.0 if gated else 0.25)
    model_yaml = _write_yaml(ctx.out / "configs" / "teacher_model.yaml", model)
    summary = _train(ctx, c.teacher_train, {"random": str(model_yaml)}, None)
    return {**summary, "checkpoint": str(ctx.dir / MODEL)}


def importance(ctx: StageContext) -> dict:
    c, spec = ctx.config, ctx.config.teacher_train
    ctx.dir.mkdir(parents=True, exist_ok=True)
    micro = 4
    ctx.cli("importance", "--ckpt", teacher_checkpoint(ctx), "--data", search_data(ctx.out),
            "--out", ctx.dir / "scores.safetensors", "--batches", c.search.calibration_batches,
            "--seq-length", spec.seq_length, "--micro-batch-size", micro, "--seed", c.seed,
            "--tp", c.search.tp, "--pp", c.search.pp)
    return {"scores": str(ctx.dir / "scores.safetensors")}


def search(ctx: StageContext) -> dict:
    from nemo_subnet.pipeline.search_stage import run_search_stage

    return run_search_stage(ctx, teacher_checkpoint(ctx))


def extract(ctx: StageContext) -> dict:
    ctx.cli("extract", "--ckpt", teacher_checkpoint(ctx), "--subnet", ctx.path("search") / "best.yaml",
            "--out", ctx.dir)
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.models.counting import count_parameters

    return {"parameters": count_parameters(ModelConfig.load(ctx.dir / "model.yaml"))}


def distill(ctx: StageContext) -> dict:
    return _train(ctx, ctx.config.student_train, {"from_checkpoint": str(ctx.path("extract"))},
                  teacher_checkpoint(ctx))


def baseline(ctx: StageContext) -> dict:
    c = ctx.config
    return _train(ctx, c.student_train, {"random": str(ctx.path("extract") / "model.yaml")},
                  teacher_checkpoint(ctx) if c.distill.baseline_kd else None)


def export(ctx: StageContext) -> dict:
    hf_dir = ctx.dir / "student_hf"
    ctx.cli("export-hf", "--ckpt", ctx.path("distill") / MODEL, "--out", hf_dir)
    from nemo_subnet.pipeline.generate import generate

    text = generate(hf_dir, ctx.config.generate_prompt)
    (ctx.dir / "generation.txt").write_text(text)
    return {"hf_dir": str(hf_dir), "generation": text}


def report(ctx: StageContext) -> dict:
    from nemo_subnet.report import write_report

    return write_report(ctx.out, ctx.dir, ctx.config)


def teacher_kind(config: PipelineConfig) -> str:
    """Importing an HF teacher is one process (``import-hf`` runs on 1 rank); pretraining one uses every rank."""
    return "single" if config.hf_model else "train"


def build_stages() -> dict[str, Stage]:
    """All stages in run order (a valid topological order of their dependencies); ``kind`` says where each runs
    (runner.StageKind), which the recipes turn into ranks and GPUs."""
    train_reads = ("student_train", "distill", "seed")
    stages = [
        Stage("data", data, reads=("data", "hf_model", "seed"), kind="host",
              help="tokenize the corpus (train a tokenizer)"),
        Stage("teacher", teacher, ("data",), ("hf_model", "teacher", "teacher_train", "seed"), kind=teacher_kind,
              resumable=True, help="import the HF teacher or pretrain it"),
        Stage("importance", importance, ("teacher",), ("search.calibration_batches", "search.tp", "search.pp",
                                                       "teacher_train.seq_length"), kind="evaluate",
              help="activation importance of heads, neurons, channels, layers"),
        # resumable: the search CLI continues a run directory without re-evaluating finished candidates
        Stage("search", search, ("importance",), ("search", "teacher_train.seq_length"), kind="evaluate",
              resumable=True, help="search the best sub-network under the parameter budget"),
        Stage("extract", extract, ("search",), kind="single", help="slice the sub-network into a standalone student"),
        Stage("distill", distill, ("extract",), train_reads, kind="train", resumable=True,
              help="pretrain the student from the sub-network with KD"),
        Stage("baseline", baseline, ("extract",), train_reads, kind="train", resumable=True,
              help="pretrain a random-init student on the same tokens"),
        Stage("export", export, ("distill",), ("generate_prompt",), kind="single",
              help="export the student to HF and generate"),
        Stage("report", report, ("distill", "baseline", "export"), kind="host", help="tables and plots"),
    ]
    return {s.name: s for s in stages}


STAGE_NAMES = tuple(build_stages())
