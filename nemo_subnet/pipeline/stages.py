"""The search-then-pretrain stages, each one ``nemo-subnet`` command (or two) on the previous stages' outputs.

::

    data ─▶ teacher ─▶ importance ─▶ search ─▶ extract ─▶ distill ─▶ export ─▶ report
      │        │                                  │    ▲                         ▲
      │        └──────────────── (frozen teacher) ┼────┘                         │
      └───────────────────────────────────────────┴──▶ baseline (random init) ───┘

``teacher`` imports ``hf_model`` when one is given, else pretrains ``config.teacher`` on the data.
Each stage writes ``<out_dir>/<stage>/``; see runner.py for completion markers and reuse.

A stage hands its command its own section of the pipeline config with the connecting paths filled in
(``config.WIRED``), serialized to ``<out_dir>/configs/<stage>.yaml`` and passed as ``--config FILE``: the child
reads exactly the dataclass the user's YAML was checked as, never a re-spelled argument list.

Data splits (disjoint documents, made once by ``data``): students and the teacher train on ``train``; their
curves are measured on ``valid`` (from step 0, the init itself); importance calibration and the search's
objective read only ``search`` (through the view ``data/search_view``, whose train and valid are both the
search split); every training run measures ``test`` once at its end, and the report's final numbers are those.
"""

from __future__ import annotations

import json
from pathlib import Path

from nemo_subnet import config as configs
from nemo_subnet.pipeline.config import PipelineConfig, section
from nemo_subnet.pipeline.runner import Stage, StageContext, StageError
from nemo_subnet.training.config import TrainConfig

SEARCH_VIEW = "search_view"
"""``data/search_view``: the search split served as a prepared directory's train and valid splits."""
MODEL = "model"
"""Every model-producing stage leaves a plain model checkpoint in ``<stage>/model``."""


def search_data(out: Path) -> Path:
    """What importance and search read: only the search split (see the module docstring)."""
    return Path(out) / "data" / SEARCH_VIEW


def teacher_checkpoint(out: Path) -> Path:
    return Path(out) / "teacher" / MODEL


def latest_checkpoint(run_dir: Path) -> Path:
    from nemo_subnet.training.checkpoint import latest_checkpoint as latest

    found = latest(run_dir)
    if found is None:
        raise StageError(f"{run_dir} has no complete checkpoint")
    return found


def train_run(spec: TrainConfig, run_dir: Path, data_dir: Path, *, init_checkpoint: Path | None = None,
              init_random: Path | None = None, teacher: Path | None = None) -> TrainConfig:
    """The ``nemo-subnet train`` config of one training run of a pipeline section (the study builds its runs
    with it too): the section's settings, this run's directory, data, init and teacher (None: plain CE, which
    reads no teacher cache either: ``distill.teacher_source`` falls back to online)."""
    path = lambda p: None if p is None else Path(p)  # noqa: E731
    no_teacher = {} if teacher is not None else {"distill.teacher_source": "online", "distill.cache": None}
    return section(spec, run_dir=Path(run_dir), **{"data.path": Path(data_dir), "init.from_checkpoint": path(init_checkpoint),
                                                   "init.random": path(init_random), "distill.teacher": path(teacher),
                                                   **no_teacher})


def _child_config(ctx: StageContext, name: str, config) -> Path:
    """The stage's section, filled in, as ``<out>/configs/<name>.yaml`` (every rank writes the same file)."""
    return configs.save(config, ctx.out / "configs" / f"{name}.yaml")


def _train(ctx: StageContext, run: TrainConfig) -> dict:
    """Run ``nemo-subnet train --config <out>/configs/<stage>.yaml`` and keep the weights for later stages."""
    ctx.cli("train", "--config", _child_config(ctx, ctx.stage.name, run), *(["--resume"] if ctx.resume else []))
    if ctx.is_main:  # weights only, for the stages that read this model
        ctx.python("nemo_subnet.pipeline.model_checkpoint", latest_checkpoint(ctx.dir), ctx.dir / MODEL)
    return final_valid(ctx.dir)


def final_valid(run_dir: Path) -> dict:
    """The last validation point and the once-measured test perplexity of a training run."""
    from nemo_subnet.training.metrics import read_metrics

    valid, test = read_metrics(run_dir, "valid"), read_metrics(run_dir, "test")
    out = {"tokens": valid[-1]["tokens"], "valid_ppl": valid[-1]["valid_ppl"]} if valid else {}
    return {**out, "test_ppl": test[-1]["test_ppl"]} if test else out


# --- stages --------------------------------------------------------------------------------------
def data(ctx: StageContext) -> dict:
    c = ctx.config
    prepare = section(c.data, out=ctx.dir)
    if c.hf_model:  # the HF teacher's tokenizer, not one trained here
        prepare = section(prepare, tokenizer=c.hf_model, train_tokenizer=None, vocab_size=None)
    ctx.cli("data", "prepare", "--config", _child_config(ctx, "data", prepare))
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
    model_yaml = configs.save(model, ctx.out / "configs" / "teacher_model.yaml")
    summary = _train(ctx, train_run(c.teacher_train, ctx.dir, ctx.path("data"), init_random=model_yaml))
    return {**summary, "checkpoint": str(ctx.dir / MODEL)}


def importance(ctx: StageContext) -> dict:
    """Scores for the search: layer-drop perplexities only when its layer metric reads them (``perplexity``);
    the default cosine metric needs the calibration pass alone."""
    ctx.dir.mkdir(parents=True, exist_ok=True)
    run = section(ctx.config.importance, ckpt=teacher_checkpoint(ctx.out), data=search_data(ctx.out),
                  out=ctx.dir / "scores.safetensors", layer_metric=ctx.config.search.layer_metric)
    ctx.cli("importance", "--config", _child_config(ctx, "importance", run))
    return {"scores": str(run.out)}


def search(ctx: StageContext) -> dict:
    """``best.yaml`` (what ``extract`` slices), ``candidates.jsonl`` (every evaluation of every sub-network with
    its parameters and perplexity on the search split, for the report), ``summary.json``, plots. Resumable: the
    search continues its run directory without re-evaluating finished candidates.

    With a family of budgets (``search.budgets``) the search writes ``best_<target>.yaml`` per budget; the
    pipeline trains one student, from the first target's (``student``); the others stay for ``nemo-subnet
    extract``."""
    run = section(ctx.config.search, ckpt=teacher_checkpoint(ctx.out), data=search_data(ctx.out), out=ctx.dir,
                  scores=ctx.path("importance") / "scores.safetensors")
    ctx.cli("search", "--config", _child_config(ctx, "search", run))
    if not ctx.is_main:  # rank 0 wrote the results; the marker records its summary
        return {}
    summary, student = json.loads((ctx.dir / "summary.json").read_text()), student_subnet(ctx.config)
    chosen = next((b for b in summary["budgets"] if b["file"] == student), None)
    if chosen is None:
        raise StageError(f"the search found no sub-network in the first budget's band ({student}): more evaluations "
                         "or a wider tolerance")
    return {"best_ppl": chosen["best"]["objective"], "best_params": chosen["best"]["params"],
            "candidates": summary["candidates"], "student": chosen["file"]}


def student_subnet(config: PipelineConfig) -> str:
    """The search's file the student is extracted from: best.yaml, or the first target's of a family."""
    from nemo_subnet.search.results import best_file

    return best_file(config.search.budgets.targets if config.search.budgets else None)


def extract(ctx: StageContext) -> dict:
    from nemo_subnet.subnet.extract import ExtractConfig

    layout = ctx.config.student_train.parallel  # the student must shard at the layout it trains at
    run = ExtractConfig(ckpt=teacher_checkpoint(ctx.out), subnet=ctx.path("search") / student_subnet(ctx.config),
                        out=ctx.dir, tp=layout.tp, pp=layout.pp)
    ctx.cli("extract", "--config", _child_config(ctx, "extract", run))
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.models.counting import count_parameters

    return {"parameters": count_parameters(ModelConfig.load(ctx.dir / "model.yaml"))}


def distill(ctx: StageContext) -> dict:
    return _train(ctx, train_run(ctx.config.student_train, ctx.dir, ctx.path("data"),
                                 init_checkpoint=ctx.path("extract"), teacher=teacher_checkpoint(ctx.out)))


def baseline(ctx: StageContext) -> dict:
    c = ctx.config
    return _train(ctx, train_run(c.student_train, ctx.dir, ctx.path("data"),
                                 init_random=ctx.path("extract") / "model.yaml",
                                 teacher=teacher_checkpoint(ctx.out) if c.baseline_kd else None))


COMPLETIONS = {"teacher": "teacher", "sub-network before training": "extract", "KD student": "distill",
               "random-init student": "baseline"}
"""Who completes the prompt in the report, and the stage whose model it is."""


def export(ctx: StageContext) -> dict:
    """The KD student as an HF model (``student_hf``), the prompt completed by each model of the run (every one
    exported to HF and generated with plain transformers), and the teacher's perplexity on the students' valid
    and test samples (an imported teacher has no curve of its own)."""
    from nemo_subnet.files import write_text_atomic
    from nemo_subnet.pipeline.generate import generate

    models = {"teacher": teacher_checkpoint(ctx.out), "extract": ctx.path("extract"),
              "distill": ctx.path("distill") / MODEL, "baseline": ctx.path("baseline") / MODEL}
    completions = {}
    for who, stage in COMPLETIONS.items():
        hf_dir = ctx.dir / ("student_hf" if stage == "distill" else f"{stage}_hf")
        ctx.cli("export-hf", "--ckpt", models[stage], "--out", hf_dir, "--overwrite")
        completions[who] = generate(hf_dir, ctx.config.generate_prompt)
    write_text_atomic(ctx.dir / "generation.txt", completions["KD student"])
    write_text_atomic(ctx.dir / "completions.json", json.dumps(completions, indent=1))
    run = train_run(ctx.config.student_train, ctx.dir / "teacher_eval", ctx.path("data"))
    result = ctx.dir / "teacher_eval.json"
    ctx.python("nemo_subnet.pipeline.evaluate_model", models["teacher"], _child_config(ctx, "teacher_eval", run), result)
    teacher_ppl = json.loads(result.read_text())
    return {"hf_dir": str(ctx.dir / "student_hf"), "generation": completions["KD student"],
            **{f"teacher_{k}": v for k, v in teacher_ppl.items()}}


def report(ctx: StageContext) -> dict:
    from nemo_subnet.report import write_report

    return write_report(ctx.out, ctx.dir)


def teacher_kind(config: PipelineConfig) -> str:
    """Importing an HF teacher is one process (``import-hf`` runs on 1 rank); pretraining one uses every rank."""
    return "single" if config.hf_model else "train"


def build_stages() -> dict[str, Stage]:
    """All stages in run order (a valid topological order of their dependencies); ``kind`` says where each runs
    (pipeline/kinds.py), ``reads`` which config sections determine its output (its fingerprint)."""
    stages = [
        Stage("data", data, reads=("data", "hf_model"), kind="host", help="tokenize the corpus (train a tokenizer)"),
        Stage("teacher", teacher, ("data",), ("hf_model", "teacher", "teacher_train"), kind=teacher_kind,
              resumable=True, help="import the HF teacher or pretrain it"),
        Stage("importance", importance, ("teacher",), ("importance", "search.layer_metric"), kind="evaluate",
              help="activation importance of heads, neurons, channels, layers"),
        # resumable: the search CLI continues a run directory without re-evaluating finished candidates
        Stage("search", search, ("importance",), ("search",), kind="evaluate", resumable=True,
              help="search the best sub-network under the parameter budget"),
        Stage("extract", extract, ("search",), ("student_train.parallel.tp", "student_train.parallel.pp"),
              kind="single", help="slice the sub-network into a standalone student"),
        Stage("distill", distill, ("extract",), ("student_train",), kind="train", resumable=True,
              help="pretrain the student from the sub-network with KD"),
        Stage("baseline", baseline, ("extract",), ("student_train", "baseline_kd"), kind="train", resumable=True,
              help="pretrain a random-init student on the same tokens"),
        Stage("export", export, ("distill", "baseline"), ("generate_prompt", "student_train"), kind="single",
              help="export the student to HF; every model completes the prompt; the teacher's valid/test ppl"),
        Stage("report", report, ("distill", "baseline", "export"), kind="host", help="tables and plots"),
    ]
    return {s.name: s for s in stages}


STAGE_NAMES = tuple(build_stages())
