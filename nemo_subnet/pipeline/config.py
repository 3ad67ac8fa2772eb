"""What one search-then-pretrain run is: the stages' own configs, composed; YAML in and out.

``PipelineConfig`` holds each stage's own config dataclass, not a copy of its fields: ``data`` is
``PrepareConfig`` (``nemo-subnet data prepare``), ``teacher_train`` and ``student_train`` are ``TrainConfig``
(``nemo-subnet train``; the KD settings are ``student_train.distill``), ``importance`` is ``ImportanceConfig``,
``search`` is ``SearchConfig``. A setting is declared once, in the stage that reads it: a field added there is
at once a YAML key, a dotted override (``search.strategy_config.population=16``), a NeMo-Run override and a
checked value here. Each stage hands its child process its section, serialized (``--config FILE``), with the
paths that connect the stages filled in (``WIRED``: left unset here, checked).

The same config drives ``make demo`` (stages in this process), the NeMo-Run recipe (one task per stage, the
config travels inside each task), ``nemo-subnet run`` and ``python -m nemo_subnet.pipeline``. Keys of the older,
flat layout (``student_train.steps``, ``search.param_fraction``, ``distill.temperature``, ``seed``) are read
as their new places (``RENAMED``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Literal

from nemo_subnet import config as configs
from nemo_subnet.config import PositiveInt
from nemo_subnet.data.prepare import PrepareConfig
from nemo_subnet.importance.collect import ImportanceConfig
from nemo_subnet.search.runner import EvalConfig, SearchConfig
from nemo_subnet.search.space import Budget, SearchSpace
from nemo_subnet.search.strategies import StrategyConfig
from nemo_subnet.teacher_cache.config import TeacherCacheConfig
from nemo_subnet.training.config import (CheckpointConfig, DataConfig, LoggingConfig, OptimizerConfig, ScheduleConfig,
                                         TrainConfig)

TEACHER_CACHE_FROM_RUN = ("out", "teacher", "data", "samples", "temperature", "parallel.tp", "parallel.pp",
                          "parallel.precision")
"""The teacher-cache build's fields the pipeline takes from the students' run (``TeacherCacheConfig.for_run``)."""

WIRED = (
    "data.out", "teacher_train.run_dir", "teacher_train.init.from_checkpoint", "teacher_train.init.random",
    "teacher_train.data.path", "teacher_train.distill.teacher", "student_train.run_dir",
    "student_train.init.from_checkpoint", "student_train.init.random", "student_train.data.path",
    "student_train.distill.teacher", "importance.ckpt", "importance.data", "importance.out",
    "importance.layer_metric", "search.ckpt", "search.data", "search.out", "search.scores",
    *(f"teacher_cache.{name}" for name in TEACHER_CACHE_FROM_RUN),
)
"""Fields the stages fill in (where each stage reads its inputs and writes its outputs, and what importance
computes for the search: ``importance.layer_metric`` is ``search.layer_metric``, so the layer-drop passes run
only when the search reads them): leave them unset."""

_TRAIN_RENAMED = {"steps": "schedule.train_steps", "warmup_steps": "schedule.warmup_steps", "lr": "optimizer.lr",
                  "min_lr": "optimizer.min_lr", "seq_length": "data.seq_length",
                  "micro_batch_size": "data.micro_batch_size", "global_batch_size": "data.global_batch_size",
                  "eval_every": "logging.eval_every", "eval_iters": "logging.eval_iters",
                  "test_iters": "logging.test_iters", "tp": "parallel.tp", "pp": "parallel.pp",
                  "checkpoint_every": "checkpoint.every_steps", "recompute": "parallel.recompute",
                  "sequence_parallel": "parallel.sequence_parallel",
                  "overlap_grad_reduce": "parallel.overlap_grad_reduce",
                  "overlap_param_gather": "parallel.overlap_param_gather",
                  "distributed_optimizer": "optimizer.use_distributed_optimizer"}
_DISTILL_FIELDS = ("alpha_ce", "beta_kd", "temperature", "divergence", "beta_jsd", "top_k", "fused_output",
                   "teacher_source", "cache")


@dataclass
class TeacherModel:
    """Shape of the teacher pretrained here when no HF model is given (Llama-style; vocab from the data)."""

    family: Literal["llama", "gpt_neox", "qwen2", "qwen3"] = "llama"
    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_attention_heads: PositiveInt = 4
    num_query_groups: PositiveInt = 2
    """Key/value heads (GQA); GPT-NeoX has one per attention head."""
    ffn_hidden_size: PositiveInt = 128
    max_position_embeddings: PositiveInt = 256

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.hidden_size % self.num_attention_heads:
            yield "hidden_size", f"{self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
        if self.family != "gpt_neox" and self.num_attention_heads % self.num_query_groups:
            yield "num_query_groups", (f"{self.num_query_groups} does not divide num_attention_heads "
                                       f"{self.num_attention_heads}")


def default_data() -> PrepareConfig:
    """The embedded corpus, a small sentencepiece tokenizer trained on it, the three held-out splits."""
    return PrepareConfig(inputs=["stdlib"], train_tokenizer="sentencepiece", vocab_size=512, max_bytes=400_000,
                         valid_fraction=0.1, search_fraction=0.1, test_fraction=0.1, progress=False)


def default_train(steps: int, seq_length: int = 64) -> TrainConfig:
    """A pipeline training run: curves from step 0 on the valid split, the test split measured once at the end,
    a checkpoint every quarter of the run (SIGTERM also saves), one kept."""
    return TrainConfig(
        data=DataConfig(seq_length=seq_length, micro_batch_size=4, global_batch_size=8),
        optimizer=OptimizerConfig(lr=3e-3, min_lr=3e-4), schedule=ScheduleConfig(train_steps=steps, warmup_steps=2),
        checkpoint=CheckpointConfig(every_steps=max(steps // 4, 1), keep_last=1),
        logging=LoggingConfig(eval_every=5, eval_iters=2, eval_at_start=True, test_iters=4))


def default_importance(seq_length: int = 64) -> ImportanceConfig:
    return ImportanceConfig(batches=2, seq_length=seq_length, micro_batch_size=4)


def default_search(seq_length: int = 64) -> SearchConfig:
    """Evolutionary search for a uniform ~1/3 student (a standard architecture: plain HF export)."""
    return SearchConfig(space=SearchSpace(granularity="fine_uniform", ordering="importance", round_to=8),
                        budget=Budget(0.34, 0.05), evaluations=12, strategy_config=StrategyConfig(population=6),
                        eval=EvalConfig(batches=2, seq_length=seq_length, micro_batch_size=4), progress=False)


@dataclass
class PipelineConfig:
    RENAMED: ClassVar[dict] = {
        **{f"{run}.{old}": f"{run}.{new}" for run in ("teacher_train", "student_train")
           for old, new in _TRAIN_RENAMED.items()},
        **{f"distill.{name}": f"student_train.distill.{name}" for name in _DISTILL_FIELDS},
        "distill.baseline_kd": "baseline_kd", "search.param_fraction": "search.budget.target",
        "search.tolerance": "search.budget.tolerance", "search.granularity": "search.space.granularity",
        "search.round_to": "search.space.round_to", "search.population": "search.strategy_config.population",
        "search.eval_batches": "search.eval.batches", "search.calibration_batches": "importance.batches",
        "seed": ("data.seed", "teacher_train.seed", "student_train.seed", "importance.seed"),
    }
    """Keys of the flat layout before the stages' configs were composed, read at their new places."""

    out_dir: str = "subnet_out"
    hf_model: str | None = None
    """A local HF model directory or .gguf file to start from (imported as the teacher; its tokenizer prepares the
    data, so ``data.train_tokenizer`` / ``data.vocab_size`` are not used). None: pretrain ``teacher`` on the data
    first."""
    teacher: TeacherModel = field(default_factory=TeacherModel)
    data: PrepareConfig = field(default_factory=default_data)
    teacher_train: TrainConfig = field(default_factory=lambda: default_train(20))
    importance: ImportanceConfig = field(default_factory=default_importance)
    search: SearchConfig = field(default_factory=default_search)
    student_train: TrainConfig = field(default_factory=lambda: default_train(10))
    """Both the KD student (``distill``, with ``student_train.distill``) and the random-init baseline: same data
    order, same tokens."""
    teacher_cache: TeacherCacheConfig = field(default_factory=lambda: TeacherCacheConfig(progress=False))
    """The build's own settings (k, method, seed, segment_microbatches) when the pipeline builds the teacher cache
    (``student_train.distill.teacher_source: cache`` with no ``distill.cache``); what the students read (teacher,
    data, samples, temperature, layout) is taken from their run (``TEACHER_CACHE_FROM_RUN``: leave it unset)."""
    baseline_kd: bool = False
    """Distill the random-init baseline too (isolates the init); default: plain pretraining, as in the paper."""
    generate_prompt: str = "def main("
    """Prompt the exported HF student completes with transformers' generate()."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Rules between the sections (checked whenever a config is loaded or built; ``validate`` adds the
        files it names)."""
        defaults = PipelineConfig()
        for path in WIRED:
            if _lookup(self, path) != _lookup(defaults, path):
                yield path, "set by the pipeline (the path between two stages); leave it unset"
        if self.hf_model is not None and (self.data.tokenizer or self.data.sentencepiece):
            yield "data.tokenizer", "an hf_model brings its own tokenizer; leave data.tokenizer / data.sentencepiece unset"
        if self.hf_model is None and not (self.data.tokenizer or self.data.sentencepiece or self.data.train_tokenizer):
            yield "data.train_tokenizer", "the teacher is pretrained here: give a tokenizer (train_tokenizer: sentencepiece)"
        for split, use in (("search", "importance and the search read only it"),
                           ("test", "the report's final numbers are measured on it")):
            if getattr(self.data, f"{split}_fraction") <= 0:
                yield f"data.{split}_fraction", f"must be > 0: the pipeline needs a {split} split ({use})"
        if self.search.budget is None and self.search.budgets is None and not (
                isinstance(self.search.space, SearchSpace) and self.search.space.budget):
            yield "search.budget", "required: the student's parameters, a fraction of the teacher's (0.34) or a count"
        if not self.builds_teacher_cache():
            given = configs.to_dict(self.teacher_cache)
            for name, value in configs.to_dict(PipelineConfig().teacher_cache).items():
                if given[name] != value:
                    yield f"teacher_cache.{name}", ("read only when the pipeline builds the teacher cache "
                                                    "(student_train.distill.teacher_source: cache, no distill.cache); "
                                                    "leave it unset")
        if self.search.budgets is not None and self.search.evaluations < len(self.search.budgets.targets):
            count = len(self.search.budgets.targets)
            yield "search.evaluations", (f"{self.search.evaluations} is fewer than the {count} budgets of "
                                         "search.budgets: every budget's student needs a sub-network")
        limit = self.teacher_positions()
        for name in ("teacher_train.data.seq_length", "student_train.data.seq_length", "importance.seq_length",
                     "search.eval.seq_length"):
            if limit is not None and _lookup(self, name) > limit:
                yield name, f"{_lookup(self, name)} is longer than the teacher's position limit {limit}"

    def builds_teacher_cache(self) -> bool:
        """The ``teacher_cache`` stage runs: the students read a cache and none is given."""
        distill = self.student_train.distill
        return distill.teacher_source == "cache" and distill.cache is None

    def student_budgets(self) -> list[str]:
        """The students' names: one per target of ``search.budgets`` (``budget_label``), [""] for one student (its
        directories are the stages' own, as before families)."""
        from nemo_subnet.search.space import budget_label

        targets = self.search.budgets.targets if self.search.budgets else []
        return [budget_label(t) for t in targets] if len(targets) > 1 else [""]

    def teacher_positions(self) -> int | None:
        """The teacher's position limit (None: an HF config that does not say)."""
        if self.hf_model is None:
            return self.teacher.max_position_embeddings
        path = Path(self.hf_model)
        try:
            if path.suffix == ".gguf":
                from nemo_subnet.conversion.gguf_io import read_gguf_config

                raw = read_gguf_config(path)[1]
            else:
                raw = json.loads((path / "config.json").read_text())
            return int(raw.get("max_position_embeddings") or 0) or None
        except (OSError, ValueError, TypeError):
            return None  # a missing or unreadable model is missing_files' problem

    def missing_files(self) -> Iterator[tuple[str, str]]:
        return missing_files(self.to_dict())

    def validate(self) -> "PipelineConfig":
        """Raise a UserError listing every problem of every stage's section, and every file it names that is
        missing, at once: before anything runs. Returns the config read again as its declared types (one that
        NeMo-Run's fiddle built from command-line strings included)."""
        configs.check(self, also=self.missing_files())
        return configs.typed(self)

    # --- YAML -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return configs.to_dict(self)

    def save(self, path: str | Path) -> None:
        configs.save(self, path)

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineConfig":
        return configs.from_dict(cls, data)

    @classmethod
    def load(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> "PipelineConfig":
        return configs.load(cls, path, overrides)


def _lookup(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def apply_overrides(config: PipelineConfig, overrides: typing.Sequence[str]) -> PipelineConfig:
    """``["search.evaluations=16", ...]`` applied to a config (values parsed as YAML), checked."""
    return configs.from_dict(PipelineConfig, configs.apply_overrides(configs.to_dict(config), overrides))


def section(config, **changes):
    """``dataclasses.replace`` for a stage's section, with dotted keys for nested fields
    (``section(train, run_dir=..., **{"data.path": d})``): how a stage fills in its ``WIRED`` paths."""
    flat = {k: v for k, v in changes.items() if "." not in k}
    nested: dict[str, dict] = {}
    for key, value in changes.items():
        if "." in key:
            head, rest = key.split(".", 1)
            nested.setdefault(head, {})[rest] = value
    for head, sub in nested.items():
        flat[head] = section(flat.get(head, getattr(config, head)), **sub)
    return dataclasses.replace(config, **flat)


def missing_files(data: dict) -> Iterator[tuple[str, str]]:
    """``(field, message)`` for each file a pipeline config's plain data names that does not exist. Read from the
    data, not the dataclass, so a config whose values do not parse still gets its files checked in the same
    report; a value of the wrong type is that report's other line, not this one's."""
    def at(*keys):
        value = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value if isinstance(value, (str, Path)) else None

    hf, space, cache = at("hf_model"), at("search", "space"), at("student_train", "distill", "cache")
    if hf is not None and not ((Path(hf) / "config.json").is_file() or (Path(hf).suffix == ".gguf"
                                                                        and Path(hf).is_file())):
        yield "hf_model", f"{hf}: no such HF model directory (config.json missing) or .gguf file"
    if space is not None and not Path(space).is_file():
        yield "search.space", f"{space}: no such search-space file"
    if cache is not None and not Path(cache).is_dir():
        yield "student_train.distill.cache", f"{cache}: no such teacher-cache directory (nemo-subnet teacher-cache)"
