"""Settings of a teacher-cache build (``nemo-subnet teacher-cache``): one YAML in, one typed dataclass inside.

    out: caches/teacher-k12
    teacher: ckpts/teacher
    data: {path: data/stdlib, seq_length: 2048, seed: 1234, micro_batch_size: 4}
    samples: 256000                 # train_steps * global_batch_size of the longest run it will serve
    k: 12
    parallel: {tp: 2, pp: 1}

The data section is the training run's own (``training.config.DataConfig``): path, seq_length and seed decide the
samples and their order; micro_batch_size is the build's (per DP rank). ``--for-run RUN.yaml`` takes teacher,
data, samples and temperature from a training config, so the cache covers exactly what that run reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from nemo_subnet.cli import UserError
from nemo_subnet.files import write_text_atomic
from nemo_subnet.training.config import (DataConfig, ParallelConfig, TrainConfig, _from_plain, _to_plain,
                                         apply_overrides)


@dataclass
class TeacherCacheConfig:
    """The teacher runs once, forward only, over the first ``samples`` samples of a training run's stream."""

    out: Path | None = None
    """The cache directory (must not hold another build; a partial one of this build resumes with --resume)."""
    teacher: Path | None = None
    """The teacher checkpoint; training runs name the same one (its fingerprint is checked, not its path)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The training run's data section (path, seq_length, seed); micro_batch_size is the build's per DP rank."""
    samples: int = 0
    """Samples of the training stream to cover, from its start: a run needs train_steps * global_batch_size of them.
    Rounded up to whole build steps (micro_batch_size * dp)."""
    method: Literal["sample", "topk"] = "sample"
    """sample: K draws from the teacher's softmax(t / T) per position (unbiased KD; docs/teacher_cache.md);
    topk: the K most likely ids with their masses and the tail bin (biased; for comparison)."""
    k: int = 12
    """Ids stored per position (12 draws ~ full KD in Anshumann et al. 2025; bytes per token in the docs)."""
    temperature: float = 1.0
    """T of the teacher's distribution; a run reading the cache must distill at the same distill.temperature."""
    seed: int = 1234
    """Seed of the draws: each sample's uniforms come from (seed, its global index), the same at any DP layout."""
    segment_microbatches: int = 64
    """Build steps per segment file: a killed build resumes at a segment boundary (at most this much is redone)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """tp, pp, precision, sequence_parallel and collective_timeout_minutes are used (forward only: no recompute)."""
    progress: bool = True

    def validate(self) -> None:
        if self.out is None or self.teacher is None or self.data.path is None:
            raise UserError("teacher-cache needs out, teacher and data.path (or --for-run RUN.yaml for the last two)")
        if self.samples < 1:
            raise UserError(f"samples must be at least 1 (train_steps * global_batch_size of the runs), got {self.samples}")
        if self.k < 1:
            raise UserError(f"k must be at least 1, got {self.k}")
        if not self.temperature > 0:
            raise UserError(f"temperature must be positive, got {self.temperature}")
        for name in ("seq_length", "micro_batch_size"):
            if getattr(self.data, name) < 1:
                raise UserError(f"data.{name} must be at least 1")
        if self.segment_microbatches < 1:
            raise UserError("segment_microbatches must be at least 1")

    @classmethod
    def for_run(cls, run: TrainConfig) -> "TeacherCacheConfig":
        """teacher, data, samples and temperature of a training run (its other sections do not matter)."""
        return cls(teacher=run.distill.teacher, data=run.data, temperature=run.distill.temperature,
                   samples=run.schedule.train_steps * run.data.global_batch_size,
                   parallel=ParallelConfig(tp=run.parallel.tp, pp=run.parallel.pp, precision=run.parallel.precision))

    def to_dict(self) -> dict:
        return _to_plain(self)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path | None, overrides=(), *, base: "TeacherCacheConfig | None" = None) -> "TeacherCacheConfig":
        """``path`` (YAML) and ``key=value`` overrides on top of ``base`` (default: the defaults)."""
        data = (base or cls()).to_dict()
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise UserError(f"config file {path} does not exist")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise UserError(f"{path}: expected a mapping at the top level")
            data = _merge(data, loaded)
        return _from_plain(cls, apply_overrides(data, overrides), "")


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
