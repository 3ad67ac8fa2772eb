"""Training run configuration: one YAML file in, small typed dataclasses inside (one per concern).

A run YAML mirrors :class:`TrainConfig`::

    run_dir: runs/student
    init: {from_checkpoint: ckpts/subnet}        # or {random: model.yaml}
    data: {path: data/stdlib, seq_length: 128, micro_batch_size: 4, global_batch_size: 16}
    optimizer: {lr: 3.0e-4, min_lr: 3.0e-5}
    schedule: {train_steps: 1000, warmup_steps: 50}
    distill: {teacher: ckpts/teacher, alpha_ce: 0.0, beta_kd: 1.0}
    checkpoint: {every_steps: 100, keep_last: 2}
    logging: {eval_every: 100}
    parallel: {tp: 1, pp: 1}

Command-line overrides are ``dotted.key=value`` with the value parsed as YAML (``schedule.train_steps=20``).
Unknown keys are errors (a typo must not silently train the wrong run).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from nemo_subnet.cli import UserError
from nemo_subnet.files import write_text_atomic
from nemo_subnet.kernels import Divergence

CONFIG_FILE = "config.yaml"


@dataclass
class InitConfig:
    """Where the student's weights come from: exactly one of the two."""

    from_checkpoint: Path | None = None
    """A model checkpoint directory (an extracted sub-network, or any nemo-subnet checkpoint)."""
    random: Path | None = None
    """A model.yaml: random initialization with the run's seed (the baseline)."""


@dataclass
class DataConfig:
    path: Path | None = None
    """A directory made by ``nemo-subnet data prepare``."""
    seq_length: int = 128
    micro_batch_size: int = 4
    """Samples per micro-batch per data-parallel rank."""
    global_batch_size: int = 8
    """Samples per optimizer step over all data-parallel ranks; a multiple of micro_batch_size * dp."""
    seed: int = 1234
    """Seed of megatron's document / sample shuffles."""
    eod_mask_loss: bool = False


@dataclass
class OptimizerConfig:
    """AdamW through megatron-core's get_megatron_optimizer."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global grad-norm clip (0 disables)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""
    max_skipped_steps: int = 5
    """Steps in a row whose loss or gradients are non-finite that are skipped (no update) before training
    stops with an error; 0 stops at the first."""


@dataclass
class ScheduleConfig:
    train_steps: int = 100
    warmup_steps: int = 0
    """Linear warmup from 0 to lr."""
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    decay_steps: int | None = None
    """Steps from start to min_lr; default train_steps."""


@dataclass
class DistillConfig:
    """Loss = alpha_ce * CE(student, labels) + beta_kd * D(teacher || student); no teacher: plain CE."""

    teacher: Path | None = None
    """Frozen teacher checkpoint (same vocabulary as the student); None trains without distillation."""
    alpha_ce: float = 0.0
    beta_kd: float = 1.0
    divergence: Divergence = Divergence.FORWARD_KL
    beta_jsd: float = 0.5
    """JSD skew (0: forward KL, 1: reverse KL)."""
    temperature: float = 1.0
    top_k: int | None = None
    """Distill against the teacher's renormalised top-k only (forward KL or JSD with beta < 1)."""
    fused_output: Literal["auto", "on", "off"] = "auto"
    """on: the last stage of the student (and the teacher) returns its final hidden states and the loss
    forms logits chunk by chunk from them and this rank's output-weight shard, never [b, s, V/tp] at once
    (CE, KD, top-k and validation alike); off: full logits. auto: on where that saves memory, i.e. when a
    micro-batch's b * s tokens exceed one chunk of the fused op (about 2^27 / (V/tp) tokens)."""
    teacher_source: Literal["online", "cache"] = "online"
    """online: the teacher runs inside every micro-batch. cache: the loss reads the teacher's stored sparse
    distribution from ``cache`` (built once by ``nemo-subnet teacher-cache``) and no teacher is built or loaded;
    ``teacher`` still names it, to check the cache was built from it. Needs forward_kl and the fused output."""
    cache: Path | None = None
    """The teacher cache directory (teacher_source cache): its teacher, data, seed, seq_length, vocabulary and
    temperature must be this run's, and it must cover train_steps * global_batch_size samples."""


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Save every N steps (0: only at the end and on SIGTERM)."""
    keep_last: int = 2
    """Keep the newest k checkpoints (older ones are removed after a successful save)."""
    save_final: bool = True
    optimizer_sharding: Literal["fully_reshardable"] = "fully_reshardable"
    """Distributed-optimizer state format (megatron's names). fully_reshardable resumes at any TP/PP/DP and
    gathers over DP on save. megatron's dp_reshardable (faster at scale) did not restore torch Adam's state
    exactly on CPU with megatron-core 0.16, so it is not offered until verified on GPU."""


@dataclass
class LoggingConfig:
    log_every: int = 1
    eval_every: int = 0
    """Validation every N steps (0: only at the end)."""
    eval_iters: int = 4
    """Validation micro-batches in total, split over data-parallel ranks: the same eval_iters *
    micro_batch_size samples (a fixed prefix of the valid split) at any layout; a multiple of dp."""
    eval_at_start: bool = False
    """Also evaluate before the first step (step 0, the init itself), so a curve starts where the run starts."""
    test_iters: int = 0
    """Micro-batches of the data's ``test`` split evaluated once, when the run completes (``kind: test`` in
    metrics.jsonl); 0: no test evaluation (the data need no test split). A multiple of dp."""
    tensorboard: bool = True
    progress: bool = True
    peak_flops: float | None = None
    """Peak FLOP/s per device for MFU; default from a table of known GPUs (None on CPU: MFU null)."""


@dataclass
class ParallelConfig:
    """Layout, precision and the memory / throughput options (docs/training.md says when to use each)."""

    tp: int = 1
    pp: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recompute: selective = core attention only (cheap, long sequences); full = whole layers
    (one more forward, ~33% compute) in blocks of recompute_num_layers."""
    recompute_num_layers: int = 1
    sequence_parallel: bool = False
    """Split norms / dropout / the residual stream along the sequence over TP (GPU, tp > 1)."""
    overlap_grad_reduce: bool = False
    """Reduce gradient buckets over DP during backward instead of after it (DP > 1: hides the all-reduce)."""
    overlap_param_gather: bool = False
    """With the distributed optimizer: all-gather updated parameters during the next forward (DP > 1)."""
    collective_timeout_minutes: int = 30
    """How long a collective waits for a lost rank (a dead node) before the run fails on every rank."""


@dataclass
class TrainConfig:
    run_dir: Path = Path("runs/default")
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    seed: int = 1234

    def validate(self) -> None:
        """Raise UserError on settings that cannot work together (checked before any process group exists)."""
        if (self.init.from_checkpoint is None) == (self.init.random is None):
            raise UserError("init needs exactly one of from_checkpoint: DIR or random: model.yaml")
        if self.data.path is None:
            raise UserError("data.path is required (a directory made by `nemo-subnet data prepare`)")
        for name in ("seq_length", "micro_batch_size", "global_batch_size"):
            if getattr(self.data, name) < 1:
                raise UserError(f"data.{name} must be at least 1")
        if self.global_batch_size_error():
            raise UserError(self.global_batch_size_error())
        if self.schedule.train_steps < 1:
            raise UserError("schedule.train_steps must be at least 1")
        decay_steps = self.schedule.decay_steps or self.schedule.train_steps
        if not 0 <= self.schedule.warmup_steps < decay_steps:
            raise UserError(f"schedule.warmup_steps {self.schedule.warmup_steps} must be at least 0 and fewer than the "
                            f"decay steps {decay_steps} (schedule.decay_steps, default train_steps)")
        if self.distill.teacher is None and self.distill.alpha_ce == 0.0:
            pass  # resolved in effective_alpha: no teacher means plain CE
        if self.distill.teacher is not None and self.distill.alpha_ce == 0 and self.distill.beta_kd == 0:
            raise UserError("distill.alpha_ce and distill.beta_kd are both 0: nothing to train on")
        if self.distill.top_k is not None:
            if self.distill.top_k < 1:
                raise UserError("distill.top_k must be at least 1")
            if self.distill.divergence is Divergence.REVERSE_KL or (
                    self.distill.divergence is Divergence.JSD and self.distill.beta_jsd == 1.0):
                raise UserError("distill.top_k needs forward_kl or jsd with beta_jsd < 1 (reverse KL is infinite off the top-k)")
        if self.distill.teacher_source == "cache":
            self._check_cache_settings()
        elif self.distill.cache is not None:
            raise UserError("distill.cache is read only with distill.teacher_source: cache (it is online)")
        if self.distill.fused_output not in ("auto", "on", "off"):
            raise UserError(f"distill.fused_output {self.distill.fused_output!r} is not one of auto, on, off")
        if self.parallel.collective_timeout_minutes < 1:
            raise UserError("parallel.collective_timeout_minutes must be at least 1")
        if self.parallel.overlap_param_gather and not self.optimizer.use_distributed_optimizer:
            raise UserError("parallel.overlap_param_gather needs optimizer.use_distributed_optimizer: true "
                            "(only the distributed optimizer gathers parameters)")
        try:
            self.execution.check(self.parallel.tp)
        except ValueError as err:
            raise UserError(f"parallel: {err}") from None
        if self.optimizer.max_skipped_steps < 0:
            raise UserError("optimizer.max_skipped_steps must be at least 0")
        if self.checkpoint.keep_last < 1:
            raise UserError("checkpoint.keep_last must be at least 1")

    def _check_cache_settings(self) -> None:
        d = self.distill
        if d.teacher is None or d.cache is None:
            raise UserError("distill.teacher_source: cache needs distill.cache (the cache directory) and distill.teacher "
                            "(the checkpoint it was built from, checked, not loaded)")
        if d.divergence is not Divergence.FORWARD_KL:
            raise UserError(f"distill.teacher_source: cache estimates forward KL only, not {d.divergence.value}")
        if d.top_k is not None:
            raise UserError("distill.top_k does not apply to a cache: the cache's own method (sample or topk) decides")
        if d.fused_output == "off":
            raise UserError("distill.teacher_source: cache computes its loss from hidden states: distill.fused_output "
                            "must be auto or on, not off")

    def global_batch_size_error(self, dp: int = 1) -> str | None:
        per_step = self.data.micro_batch_size * dp
        if self.data.global_batch_size % per_step:
            return (f"data.global_batch_size {self.data.global_batch_size} is not a multiple of "
                    f"micro_batch_size * data_parallel = {self.data.micro_batch_size} * {dp}")
        return None

    @property
    def execution(self):
        from nemo_subnet.models.execution import ExecutionOptions

        p = self.parallel
        return ExecutionOptions(recompute=p.recompute, recompute_num_layers=p.recompute_num_layers,
                                sequence_parallel=p.sequence_parallel)

    @property
    def loss_weights(self) -> tuple[float, float]:
        """(alpha_ce, beta_kd) actually used: plain CE (1, 0) without a teacher."""
        if self.distill.teacher is None:
            return 1.0, 0.0
        return self.distill.alpha_ce, self.distill.beta_kd

    def to_dict(self) -> dict:
        return _to_plain(self)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _from_plain(cls, data, "")

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(apply_overrides(data, overrides))


def apply_overrides(data: dict, overrides) -> dict:
    """``["a.b=1", ...]`` applied onto a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return data


def _to_plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Divergence):
        return value.value
    return value


def _from_plain(cls, data, where: str):
    if not isinstance(data, dict):
        raise UserError(f"config section {where or '<top>'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown config keys in {where or '<top>'}: {unknown} (known: {sorted(names)})")
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(hint):
        return _from_plain(hint, value, where + ".")
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(typing.get_args(hint)):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if value not in typing.get_args(hint):
            raise UserError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    try:
        if hint is Path:
            return Path(value)
        if isinstance(hint, type) and issubclass(hint, Divergence):
            return Divergence(value)
        if hint is float:
            return float(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise UserError(f"{where}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value
