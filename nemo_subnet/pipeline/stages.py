"""The search-then-pretrain stages, each one ``nemo-subnet`` command (or two) on the previous stages' outputs.

::

    data ─▶ teacher ─▶ importance ─▶ search ─▶ extract ─▶ distill ─▶ export ─▶ report
      │        │                                  │    ▲                         ▲
      │        └─(frozen teacher | teacher_cache)─┼────┘                         │
      └───────────────────────────────────────────┴──▶ baseline (random init) ───┘

``teacher`` imports ``hf_model`` when one is given, else pretrains ``config.teacher`` on the data.
Each stage writes ``<out_dir>/<stage>/``; see runner.py for completion markers and reuse.

``teacher_cache`` (between the teacher and the students) runs only when the students read a teacher cache and
none is given (``student_train.distill.teacher_source: cache``, no ``distill.cache``): the teacher once, forward
only, over exactly the samples the students train on; every KD student then reads it and builds no teacher.
With ``search.budgets`` (a family) extract, distill and baseline make one student per budget in
``<stage>/<target>/`` from the one search; one budget keeps ``<stage>/`` itself. Export converts the first
budget's KD student; the report has a row per budget.

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


def _train(ctx: StageContext, run: TrainConfig, name: str | None = None) -> dict:
    """Run ``nemo-subnet train --config <out>/configs/<name>.yaml`` (name: the stage's) and keep the weights of
    ``run.run_dir`` in its ``model/`` for later stages."""
    run_dir = Path(run.run_dir)
    if not (run_dir / MODEL).is_dir():  # a family's student finished before a relaunch is not trained again
        ctx.cli("train", "--config", _child_config(ctx, name or ctx.stage.name, run),
                *(["--resume"] if ctx.resume else []))
        if ctx.is_main:  # weights only, for the stages that read this model
            ctx.python("nemo_subnet.pipeline.model_checkpoint", latest_checkpoint(run_dir), run_dir / MODEL)
    summary = final_valid(run_dir)
    cache = run.distill.cache if run.distill.teacher_source == "cache" else None
    return summary if cache is None else {**summary, "teacher_cache": str(cache)}


def _per_student(ctx: StageContext, make) -> dict:
    """``make(name, directory)`` for each student of the config (``student_budgets``): one student keeps the stage's
    directory and marker as before families; a family puts each in ``<stage>/<name>/`` and its marker summary is
    the first budget's (the one exported) with every student's under ``students``."""
    names = ctx.config.student_budgets()
    if names == [""]:
        return make("", ctx.dir)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    students = {name: make(name, ctx.dir / name) for name in names}
    return {**students[names[0]], "students": students}


def student_dir(out: Path, stage: str, name: str) -> Path:
    """Where student ``name`` (a ``student_budgets`` entry; "" for the one student) of ``stage`` lives."""
    return Path(out) / stage / name if name else Path(out) / stage


def cache_dir(config: PipelineConfig, out: Path) -> Path | None:
    """The teacher cache the students read: the one given, the ``teacher_cache`` stage's, or None (online KD)."""
    distill = config.student_train.distill
    if distill.teacher_source != "cache":
        return None
    return distill.cache if distill.cache is not None else Path(out) / "teacher_cache"


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

    With a family of budgets (``search.budgets``) the search writes ``best_<target>.yaml`` per budget and the
    pipeline trains a student from each (``students``); the stage fails when a budget got no sub-network."""
    run = section(ctx.config.search, ckpt=teacher_checkpoint(ctx.out), data=search_data(ctx.out), out=ctx.dir,
                  scores=ctx.path("importance") / "scores.safetensors")
    ctx.cli("search", "--config", _child_config(ctx, "search", run))
    if not ctx.is_main:  # rank 0 wrote the results; the marker records its summary
        return {}
    summary, files = json.loads((ctx.dir / "summary.json").read_text()), student_subnets(ctx.config)
    found = {b["file"]: b for b in summary["budgets"] if b.get("best")}
    missing = [f for f in files if f not in found]
    if missing:
        raise StageError(f"the search found no sub-network in the band of {', '.join(missing)}: more evaluations "
                         "or a wider tolerance")
    chosen = found[files[0]]
    out = {"best_ppl": chosen["best"]["objective"], "best_params": chosen["best"]["params"],
           "candidates": summary["candidates"], "student": chosen["file"]}
    if len(files) > 1:
        out["students"] = {name: {"file": f, "best_ppl": found[f]["best"]["objective"],
                                  "best_params": found[f]["best"]["params"]}
                           for name, f in zip(ctx.config.student_budgets(), files)}
    return out


def student_subnets(config: PipelineConfig) -> list[str]:
    """The search's files the students are extracted from: best.yaml, or best_<target>.yaml per target of a
    family (in ``student_budgets`` order)."""
    from nemo_subnet.search.results import best_file

    targets = config.search.budgets.targets if config.search.budgets else None
    return [best_file(targets, i) for i in range(len(targets) if targets and len(targets) > 1 else 1)]


def student_subnet(config: PipelineConfig) -> str:
    """The first student's file (the one exported): best.yaml, or the first target's of a family."""
    return student_subnets(config)[0]


def teacher_cache(ctx: StageContext) -> dict:
    """The students' teacher cache, built once (only when they read one and none is given): ``for_run`` of the
    exact run the students train (same data, seed, samples, sequence length, temperature, layout), with the
    section's own k / method / seed. Resumable: a killed build continues at its first incomplete segment."""
    from nemo_subnet.teacher_cache.config import TeacherCacheConfig

    c = ctx.config
    run = train_run(c.student_train, ctx.out / "distill", ctx.path("data"), teacher=teacher_checkpoint(ctx.out))
    wired = TeacherCacheConfig.for_run(run)
    build = section(c.teacher_cache, out=ctx.dir, teacher=wired.teacher, data=wired.data, samples=wired.samples,
                    temperature=wired.temperature, parallel=section(c.teacher_cache.parallel, tp=wired.parallel.tp,
                                                                    pp=wired.parallel.pp,
                                                                    precision=wired.parallel.precision))
    ctx.cli("teacher-cache", "--config", _child_config(ctx, "teacher_cache", build),
            *(["--resume"] if ctx.resume else []))
    if not ctx.is_main:
        return {}
    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.models.counting import forward_flops_per_token
    from nemo_subnet.teacher_cache import store

    manifest = store.read_record(ctx.dir, store.MANIFEST_FILE)
    tokens = manifest["layout"]["covered"] * build.data.seq_length
    flops = tokens * forward_flops_per_token(read_model_config(build.teacher), build.data.seq_length)
    return {"cache": str(ctx.dir), "samples": manifest["layout"]["covered"], "tokens": tokens,
            "bytes_per_token": manifest["bytes_per_token"], "bytes": tokens * manifest["bytes_per_token"],
            "flops": flops, "method": build.method, "k": build.k}


def extract(ctx: StageContext) -> dict:
    from nemo_subnet.models.config import ModelConfig
    from nemo_subnet.models.counting import count_parameters
    from nemo_subnet.subnet.extract import ExtractConfig

    layout = ctx.config.student_train.parallel  # the student must shard at the layout it trains at
    files = dict(zip(ctx.config.student_budgets(), student_subnets(ctx.config)))

    def one(name: str, out: Path) -> dict:
        run = ExtractConfig(ckpt=teacher_checkpoint(ctx.out), subnet=ctx.path("search") / files[name], out=out,
                            tp=layout.tp, pp=layout.pp)
        ctx.cli("extract", "--config", _child_config(ctx, "_".join(filter(None, ("extract", name))), run))
        return {"parameters": count_parameters(ModelConfig.load(out / "model.yaml"))}

    return _per_student(ctx, one)


def distill(ctx: StageContext) -> dict:
    def one(name: str, run_dir: Path) -> dict:
        run = train_run(ctx.config.student_train, run_dir, ctx.path("data"),
                        init_checkpoint=student_dir(ctx.out, "extract", name), teacher=teacher_checkpoint(ctx.out))
        if cache_dir(ctx.config, ctx.out) is not None:
            run = section(run, **{"distill.cache": cache_dir(ctx.config, ctx.out)})
        return _train(ctx, run, "_".join(filter(None, ("distill", name))))

    return _per_student(ctx, one)


def baseline(ctx: StageContext) -> dict:
    c = ctx.config

    def one(name: str, run_dir: Path) -> dict:
        run = train_run(c.student_train, run_dir, ctx.path("data"),
                        init_random=student_dir(ctx.out, "extract", name) / "model.yaml",
                        teacher=teacher_checkpoint(ctx.out) if c.baseline_kd else None)
        if c.baseline_kd and cache_dir(c, ctx.out) is not None:
            run = section(run, **{"distill.cache": cache_dir(c, ctx.out)})
        return _train(ctx, run, "_".join(filter(None, ("baseline", name))))

    return _per_student(ctx, one)


COMPLETIONS = {"teacher": "teacher", "sub-network before training": "extract", "KD student": "distill",
               "random-init student": "baseline"}
"""Who completes the prompt in the report, and the stage whose model it is."""


def export(ctx: StageContext) -> dict:
    """The KD student as an HF model (``student_hf``), the prompt completed by each model of the run (every one
    exported to HF and generated with plain transformers), and the teacher's perplexity on the students' valid
    and test samples (an imported teacher has no curve of its own)."""
    from nemo_subnet.files import write_text_atomic
    from nemo_subnet.pipeline.generate import generate

    first = ctx.config.student_budgets()[0]  # a family's first budget is the exported student
    models = {"teacher": teacher_checkpoint(ctx.out), "extract": student_dir(ctx.out, "extract", first),
              "distill": student_dir(ctx.out, "distill", first) / MODEL,
              "baseline": student_dir(ctx.out, "baseline", first) / MODEL}
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
    others = {name: str(student_dir(ctx.out, "distill", name) / MODEL) for name in ctx.config.student_budgets()[1:]}
    return {"hf_dir": str(ctx.dir / "student_hf"), "generation": completions["KD student"],
            **{f"teacher_{k}": v for k, v in teacher_ppl.items()}, **({"other_students": others} if others else {})}


def report(ctx: StageContext) -> dict:
    from nemo_subnet.report import write_report

    return write_report(ctx.out, ctx.dir)


TEACHER_CACHE_READS = ("teacher_cache", "student_train.data", "student_train.schedule.train_steps",
                       "student_train.distill.temperature", "student_train.parallel.tp", "student_train.parallel.pp",
                       "student_train.parallel.precision")
"""What decides the cache the stage builds: its own section and what ``TeacherCacheConfig.for_run`` takes from the
students' run."""


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
        # only when the students read a teacher cache that is not given; resumable: the builder continues a build
        Stage("teacher_cache", teacher_cache, ("teacher",), TEACHER_CACHE_READS, kind="train", resumable=True,
              applies=PipelineConfig.builds_teacher_cache,
              help="run the teacher once over the students' samples and store its sampled distribution"),
        Stage("extract", extract, ("search",), ("student_train.parallel.tp", "student_train.parallel.pp"),
              kind="single", help="slice the sub-network(s) into standalone students (one per budget)"),
        Stage("distill", distill, ("extract", "teacher_cache"), ("student_train",), kind="train", resumable=True,
              help="pretrain the student(s) from the sub-network(s) with KD"),
        Stage("baseline", baseline, ("extract", "teacher_cache"), ("student_train", "baseline_kd"), kind="train",
              resumable=True, help="pretrain random-init student(s) on the same tokens"),
        Stage("export", export, ("distill", "baseline"), ("generate_prompt", "student_train"), kind="single",
              help="export the student to HF; every model completes the prompt; the teacher's valid/test ppl"),
        Stage("report", report, ("distill", "baseline", "export"), kind="host", help="tables and plots"),
    ]
    return {s.name: s for s in stages}


STAGE_NAMES = tuple(build_stages())
