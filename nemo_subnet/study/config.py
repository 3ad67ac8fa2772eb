"""What a study measures: one teacher, one student token budget, rows of (init, loss), seeds; two presets.

Rows (``study_rows``), each trained with ``seeds`` training seeds at the same token budget unless noted:

- baselines: ``random_ce`` (random init, CE), ``random_ce_long`` (the same, ``long_factor`` x the tokens: its
  curve shows whether the target is meaningful), ``random_kd`` (random init + KD);
- initialisations at the main budget, each with CE only (``*_ce``) and with KD (``*_kd``): ``firstk`` (the
  first k units of the importance pick's architecture), ``minitron`` (importance-ordered: top units by
  activation importance, layers by cosine importance, the architecture with the most importance mass under
  the budget: the proxy strategy, one evaluation), ``randsearch`` and ``evosearch`` (random / evolutionary
  search with the same number of evaluations on the search split);
- KD variants on the evolutionary init: top-k 8 and 64 (forward KL on the renormalised top-k), reverse KL,
  JSD (forward KL is ``evosearch_kd``);
- granularity: evolutionary search + KD in each of the four spaces at two budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nemo_subnet.config import Fraction, PositiveInt, updated
from nemo_subnet.kernels import Divergence
from nemo_subnet.pipeline.config import PipelineConfig, TeacherModel, default_train

GRANULARITIES = ("coarse_uniform", "fine_uniform", "coarse_layerwise", "fine_layerwise")


@dataclass(frozen=True)
class Init:
    """How a student's weights start: random, or a sub-network of the teacher found one way."""

    kind: Literal["random", "firstk", "minitron", "random_search", "evolutionary"]
    granularity: str = "fine_uniform"
    budget: float = 0.34

    @property
    def name(self) -> str:
        return self.kind if self.kind in ("random", "firstk", "minitron") and self.granularity == "fine_uniform" \
            else f"{self.kind}-{self.granularity}-{self.budget:g}"


@dataclass(frozen=True)
class Row:
    name: str
    init: Init
    kd: bool
    divergence: Divergence = Divergence.FORWARD_KL
    top_k: int | None = None
    token_factor: int = 1
    """Multiple of the student token budget (the long random-init baseline)."""
    group: str = "baselines"


@dataclass
class StudyConfig:
    """What a study runs; ``nemo-subnet study`` reads it with dotted overrides (``base.search.evaluations=8``)."""

    out_dir: str = "study_out"
    base: PipelineConfig = field(default_factory=PipelineConfig)
    """Data, teacher (pretrained here), importance and search settings, student training (the pipeline's)."""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    budget: Fraction = 0.34
    """The main budget (fraction of the teacher's parameters)."""
    granularity_budgets: list[Fraction] = field(default_factory=lambda: [0.25, 0.5])
    long_factor: PositiveInt = 4
    """The long random-init baseline trains this many times the student token budget."""

    def rows(self) -> list[Row]:
        return study_rows(self)


def study_rows(config: StudyConfig) -> list[Row]:
    main = config.base.search.space.granularity.value
    b = config.budget
    init = {kind: Init(kind, main, b) for kind in ("random", "firstk", "minitron", "random_search", "evolutionary")}
    short = {"random_search": "randsearch", "evolutionary": "evosearch"}
    rows = [Row("random_ce", init["random"], False), Row("random_ce_long", init["random"], False,
                                                          token_factor=config.long_factor),
            Row("random_kd", init["random"], True)]
    for kind in ("firstk", "minitron", "random_search", "evolutionary"):
        for kd in (False, True):
            rows.append(Row(f"{short.get(kind, kind)}_{'kd' if kd else 'ce'}", init[kind], kd, group="inits"))
    best = init["evolutionary"]
    rows += [Row("evosearch_kd_top8", best, True, top_k=8, group="kd variants"),
             Row("evosearch_kd_top64", best, True, top_k=64, group="kd variants"),
             Row("evosearch_kd_reverse", best, True, divergence=Divergence.REVERSE_KL, group="kd variants"),
             Row("evosearch_kd_jsd", best, True, divergence=Divergence.JSD, group="kd variants")]
    for granularity in GRANULARITIES:
        for budget in config.granularity_budgets:
            rows.append(Row(f"evo_{granularity}_{budget:g}_kd", Init("evolutionary", granularity, budget), True,
                            group="granularity"))
    return rows


def _run(steps: int, micro_batch_size: int, global_batch_size: int, warmup_steps: int, eval_every: int,
             eval_iters: int, test_iters: int, seq_length: int, lr: float | None = None):
    changes = {"data.micro_batch_size": micro_batch_size, "data.global_batch_size": global_batch_size,
               "schedule.warmup_steps": warmup_steps, "logging.eval_every": eval_every, "logging.eval_iters": eval_iters,
               "logging.test_iters": test_iters}
    if lr is not None:
        changes.update({"optimizer.lr": lr, "optimizer.min_lr": lr / 10})
    return updated(default_train(steps, seq_length), changes)


def full() -> StudyConfig:
    """The real run: a teacher larger and trained longer than the demo's (hidden 256, 6 layers vs 192/6; 240
    steps x 4096 tokens vs 200 x 2048), students at ~1/3 of it for 48 steps x 2048 tokens, 3 seeds.
    Sized for <= 90 minutes on 2 idle CPU cores (benchmarks/results/study/study.md: 90.3 min measured on 2 cores
    shared with the test suite)."""
    base = updated(PipelineConfig(), {
        "teacher": TeacherModel(family="llama", hidden_size=256, num_layers=6, num_attention_heads=8,
                                num_query_groups=4, ffn_hidden_size=640, max_position_embeddings=128),
        "data.vocab_size": 2048, "data.max_bytes": 4_000_000,
        "data.valid_fraction": 0.03, "data.search_fraction": 0.03, "data.test_fraction": 0.03,
        "teacher_train": _run(240, 8, 32, 20, 60, 4, 8, seq_length=128, lr=2e-3),
        "importance.batches": 8, "importance.seq_length": 128,
        "search.evaluations": 24, "search.strategy_config.population": 8, "search.eval.batches": 4,
        "search.eval.seq_length": 128,
        "student_train": _run(48, 8, 16, 4, 8, 4, 8, seq_length=128, lr=2e-3),
    })
    return StudyConfig(out_dir="study_out/full", base=base)


def mini() -> StudyConfig:
    """The test-suite miniature: every row, 2 seeds, seconds per run (numbers meaningless, structure real)."""
    base = updated(PipelineConfig(), {
        "teacher": TeacherModel(family="llama", hidden_size=64, num_layers=2, num_attention_heads=4,
                                num_query_groups=2, ffn_hidden_size=128, max_position_embeddings=64),
        "data.vocab_size": 384, "data.max_bytes": 250_000,
        "teacher_train": _run(6, 4, 4, 2, 3, 1, 1, seq_length=32),
        "importance.batches": 1, "importance.seq_length": 32,
        "search.evaluations": 3, "search.strategy_config.population": 2, "search.eval.batches": 1,
        "search.eval.seq_length": 32,
        "student_train": _run(2, 4, 4, 0, 1, 1, 1, seq_length=32),
    })
    return StudyConfig(out_dir="study_out/mini", base=base, seeds=[1, 2], long_factor=2)


PRESETS = {"full": full, "mini": mini}
