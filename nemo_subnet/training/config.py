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
Loading, overrides and checks are the one config mechanism's (``nemo_subnet.config``): unknown keys are errors
(a typo must not silently train the wrong run), and every problem of a file is reported at once. The same
``TrainConfig`` is a section of the pipeline's config (``teacher_train``, ``student_train``), so a field added
here is a recipe setting too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from nemo_subnet import config as configs
from nemo_subnet.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability
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
    seq_length: PositiveInt = 128
    micro_batch_size: PositiveInt = 4
    """Samples per micro-batch per data-parallel rank."""
    global_batch_size: PositiveInt = 8
    """Samples per optimizer step over all data-parallel ranks; a multiple of micro_batch_size * dp."""
    seed: int = 1234
    """Seed of megatron's document / sample shuffles."""
    eval_seed: int | None = None
    """Seed of the valid / test shuffles (None: ``seed``): fix it to measure runs of different data orders on the
    same evaluation samples (the study's seeds are then paired)."""
    eod_mask_loss: bool = False


@dataclass
class OptimizerConfig:
    """AdamW through megatron-core's get_megatron_optimizer."""

    lr: PositiveFloat = 3e-4
    min_lr: NonNegativeFloat = 3e-5
    weight_decay: NonNegativeFloat = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: NonNegativeFloat = 1.0
    """Global grad-norm clip (0 disables)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""
    max_skipped_steps: NonNegativeInt = 5
    """Steps in a row whose loss or gradients are non-finite that are skipped (no update) before training
    stops with an error; 0 stops at the first."""


@dataclass
class ScheduleConfig:
    train_steps: PositiveInt = 100
    warmup_steps: NonNegativeInt = 0
    """Linear warmup from 0 to lr."""
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    decay_steps: PositiveInt | None = None
    """Steps from start to min_lr; default train_steps."""


@dataclass
class DistillConfig:
    """Loss = alpha_ce * CE(student, labels) + beta_kd * D(teacher || student); no teacher: plain CE."""

    teacher: Path | None = None
    """Frozen teacher checkpoint (same vocabulary as the student); None trains without distillation."""
    alpha_ce: NonNegativeFloat = 0.0
    beta_kd: NonNegativeFloat = 1.0
    divergence: Divergence = Divergence.FORWARD_KL
    beta_jsd: Probability = 0.5
    """JSD skew (0: forward KL, 1: reverse KL)."""
    temperature: PositiveFloat = 1.0
    top_k: PositiveInt | None = None
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

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.teacher is not None and self.alpha_ce == 0 and self.beta_kd == 0:
            yield "beta_kd", "alpha_ce and beta_kd are both 0: nothing to train on"
        if self.top_k is not None and (self.divergence is Divergence.REVERSE_KL or (
                self.divergence is Divergence.JSD and self.beta_jsd == 1.0)):
            yield "top_k", "top_k needs forward_kl or jsd with beta_jsd < 1 (reverse KL is infinite off the top-k)"
        if self.teacher_source == "online":
            if self.cache is not None:
                yield "cache", "read only with teacher_source: cache (it is online); leave it unset"
            return
        if self.divergence is not Divergence.FORWARD_KL:
            yield "divergence", f"teacher_source: cache estimates forward_kl only, not {self.divergence.value}"
        if self.top_k is not None:
            yield "top_k", "does not apply to a cache: the cache's own method (sample or topk) decides; leave it unset"
        if self.fused_output == "off":
            yield "fused_output", "teacher_source: cache computes its loss from hidden states: auto or on, not off"


@dataclass
class CheckpointConfig:
    every_steps: NonNegativeInt = 0
    """Save every N steps (0: only at the end and on SIGTERM)."""
    keep_last: PositiveInt = 2
    """Keep the newest k checkpoints (older ones are removed after a successful save)."""
    save_final: bool = True
    optimizer_sharding: Literal["fully_reshardable"] = "fully_reshardable"
    """Distributed-optimizer state format (megatron's names). fully_reshardable resumes at any TP/PP/DP and
    gathers over DP on save. megatron's dp_reshardable (faster at scale) did not restore torch Adam's state
    exactly on CPU with megatron-core 0.16, so it is not offered until verified on GPU."""


@dataclass
class LoggingConfig:
    log_every: PositiveInt = 1
    eval_every: NonNegativeInt = 0
    """Validation every N steps (0: only at the end)."""
    eval_steps: list[PositiveInt] = field(default_factory=list)
    """Also validate after these steps: dense points early, where a curve falls fastest (a crossing of a target
    there is then resolved, not interpolated over a whole eval_every interval)."""
    eval_iters: PositiveInt = 4
    """Validation micro-batches in total, split over data-parallel ranks: the same eval_iters *
    micro_batch_size samples (a fixed prefix of the valid split) at any layout; a multiple of dp."""
    eval_at_start: bool = False
    """Also evaluate before the first step (step 0, the init itself), so a curve starts where the run starts."""
    test_iters: NonNegativeInt = 0
    """Micro-batches of the data's ``test`` split evaluated once, when the run completes (``kind: test`` in
    metrics.jsonl); 0: no test evaluation (the data need no test split). A multiple of dp."""
    tensorboard: bool = True
    progress: bool = True
    peak_flops: PositiveFloat | None = None
    """Peak FLOP/s per device for MFU; default from a table of known GPUs (None on CPU: MFU null)."""


@dataclass
class ParallelConfig:
    """Layout, precision and the memory / throughput options (docs/training.md says when to use each)."""

    tp: PositiveInt = 1
    pp: PositiveInt = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recompute: selective = the MLPs (~64% of a layer's activations for ~+22% compute, Llama shapes;
    models/execution.py); full = whole layers (one more forward, ~33% compute) in blocks of recompute_num_layers."""
    recompute_num_layers: PositiveInt = 1
    sequence_parallel: bool = False
    """Split norms / dropout / the residual stream along the sequence over TP (GPU, tp > 1)."""
    overlap_grad_reduce: bool = False
    """Reduce gradient buckets over DP during backward instead of after it (DP > 1: hides the all-reduce)."""
    overlap_param_gather: bool = False
    """With the distributed optimizer: all-gather updated parameters during the next forward (DP > 1)."""
    collective_timeout_minutes: PositiveInt = 30
    """How long a collective waits for a lost rank (a dead node) before the run fails on every rank."""

    def params_dtype(self):
        """The torch dtype ``precision`` means on this machine (auto: bf16 where CUDA is, else fp32)."""
        import torch

        if self.precision == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


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

    def problems(self) -> Iterator[tuple[str, str]]:
        """Settings that cannot work together (checked before any process group exists); the sections' own
        types, ranges and rules are checked by the config mechanism. What a run must also have (``init``,
        ``data.path``: the pipeline fills them in for its sections) is ``unset_inputs``."""
        if self.init.from_checkpoint is not None and self.init.random is not None:
            yield "init", "needs exactly one of from_checkpoint: DIR or random: model.yaml, not both"
        if self.global_batch_size_error():
            yield None, self.global_batch_size_error()
        decay_steps = self.schedule.decay_steps or self.schedule.train_steps
        if self.schedule.warmup_steps >= decay_steps:
            yield "schedule.warmup_steps", (f"{self.schedule.warmup_steps} must be fewer than the decay steps "
                                            f"{decay_steps} (schedule.decay_steps, default train_steps)")
        if self.parallel.overlap_param_gather and not self.optimizer.use_distributed_optimizer:
            yield "parallel.overlap_param_gather", ("needs optimizer.use_distributed_optimizer: true (only the "
                                                    "distributed optimizer gathers parameters)")
        try:
            self.execution.check(self.parallel.tp)
        except ValueError as err:
            yield "parallel", str(err)

    def unset_inputs(self) -> Iterator[tuple[str, str]]:
        if self.init.from_checkpoint is None and self.init.random is None:
            yield "init", "needs exactly one of from_checkpoint: DIR or random: model.yaml"
        if self.data.path is None:
            yield "data.path", "required (a directory made by `nemo-subnet data prepare`)"
        if self.distill.teacher_source == "cache" and self.distill.cache is None:  # a pipeline may build it
            yield "distill.cache", ("teacher_source: cache needs the cache directory (built by `nemo-subnet "
                                    "teacher-cache`)")
        if self.distill.teacher_source == "cache" and self.distill.teacher is None:
            yield "distill.teacher", ("teacher_source: cache needs the checkpoint the cache was built from (checked, "
                                      "not loaded)")

    def validate(self) -> None:
        """Raise a UserError listing every problem of this run (the checks of loading a YAML, and its inputs)."""
        configs.check(self, also=self.unset_inputs())

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
        return configs.to_dict(self)

    def save(self, path: str | Path) -> None:
        configs.save(self, path)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return configs.from_dict(cls, data)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "TrainConfig":
        return configs.load(cls, path, overrides)
