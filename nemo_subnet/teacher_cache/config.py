"""Settings of a teacher-cache build (``nemo-subnet teacher-cache``): one typed dataclass, read by the one config
mechanism (``nemo_subnet.config``), so each field is at once a YAML key, a dotted override and a generated flag.

    out: caches/teacher-k12
    teacher: ckpts/teacher
    data: {path: data/stdlib, seq_length: 2048, seed: 1234, micro_batch_size: 4}
    samples: 256000                 # train_steps * global_batch_size of the longest run it will serve
    k: 12
    parallel: {tp: 2, pp: 1}

The data section is the training run's own (``training.config.DataConfig``): path, seq_length and seed decide the
samples and their order; micro_batch_size is the build's (per DP rank). ``--for-run RUN.yaml`` takes teacher,
data, samples and temperature from a training config (``for_run``), so the cache covers exactly what that run
reads; a run reads it with ``distill.teacher_source: cache`` and ``distill.cache: OUT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from nemo_subnet import config as configs
from nemo_subnet.config import PositiveFloat, PositiveInt
from nemo_subnet.training.config import DataConfig, ParallelConfig, TrainConfig

REQUIRED = ("out", "teacher", "data.path", "samples")
"""What a build must be given (by --config, flags, overrides or --for-run): the defaults leave them unset."""


@dataclass
class TeacherCacheConfig:
    """The teacher runs once, forward only, over the first ``samples`` samples of a training run's stream."""

    out: Path | None = None
    """The cache directory (must not hold another build; a partial one of this build resumes with --resume)."""
    teacher: Path | None = None
    """The teacher checkpoint; training runs name the same one (its fingerprint is checked, not its path)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training run's data section (path, seq_length, seed); micro_batch_size is the build's per DP rank."""
    samples: PositiveInt | None = None
    """Samples of the training stream to cover, from its start: a run needs train_steps * global_batch_size of them.
    Rounded up to whole build steps (micro_batch_size * dp)."""
    method: Literal["sample", "topk"] = "sample"
    """sample: K draws from the teacher's softmax(t / T) per position (unbiased KD; docs/teacher_cache.md);
    topk: the K most likely ids with their masses and the tail bin (biased; for comparison)."""
    k: PositiveInt = 12
    """Ids stored per position (12 draws ~ full KD in Anshumann et al. 2025; bytes per token in the docs)."""
    temperature: PositiveFloat = 1.0
    """T of the teacher's distribution; a run reading the cache must distill at the same distill.temperature."""
    seed: int = 1234
    """Seed of the draws: each sample's uniforms come from (seed, its global index), the same at any DP layout."""
    segment_microbatches: PositiveInt = 64
    """Build steps per segment file: a killed build resumes at a segment boundary (at most this much is redone)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """tp, pp, precision, sequence_parallel and collective_timeout_minutes are used (forward only: no recompute)."""
    progress: bool = True

    def unset_inputs(self) -> Iterator[tuple[str, str]]:
        for dotted in REQUIRED:
            value = self
            for part in dotted.split("."):
                value = getattr(value, part)
            if value is None:
                yield dotted, "required (give it, or --for-run RUN.yaml for teacher, data.path and samples)"

    def validate(self) -> None:
        """Raise a UserError listing every problem of this build (types, ranges, allowed values, what is unset)."""
        configs.check(self, also=self.unset_inputs())

    @classmethod
    def for_run(cls, run: TrainConfig) -> "TeacherCacheConfig":
        """teacher, data, samples and temperature of a training run (its other sections do not matter)."""
        return cls(teacher=run.distill.teacher, data=run.data, temperature=run.distill.temperature,
                   samples=run.schedule.train_steps * run.data.global_batch_size,
                   parallel=ParallelConfig(tp=run.parallel.tp, pp=run.parallel.pp, precision=run.parallel.precision))
