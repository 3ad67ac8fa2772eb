"""What one search-then-pretrain run is: small dataclasses, one per stage concern, YAML in and out.

The same ``PipelineConfig`` drives ``make demo`` (stages called in this process), the NeMo-Run recipe
(one task per stage, the config travels inside each task) and ``nemo-subnet run``. Every field is plain
data so NeMo-Run / fiddle can override any of them from the command line (``config.search.population=16``).
"""


import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from nemo_subnet.files import write_text_atomic


@dataclass
class TeacherModel:
    """Shape of the teacher pretrained here when no HF model is given (Llama-style; vocab from the data)."""

    family: Literal["llama", "gpt_neox", "qwen2", "qwen3"] = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    num_query_groups: int = 2
    ffn_hidden_size: int = 128
    max_position_embeddings: int = 256


@dataclass
class DataSpec:
    inputs: list[str] = field(default_factory=lambda: ["stdlib"])
    """Files / directories of text, JSONL or parquet, or the embedded corpus ``stdlib``."""
    text_key: str = "text"
    vocab_size: int = 512
    """Size of the sentencepiece tokenizer trained on the data (ignored with an HF model: its tokenizer is used)."""
    max_bytes: int | None = 400_000
    """Keep only a prefix of the corpus of about this many bytes (None: all)."""
    valid_fraction: float = 0.1
    """Documents held out for the training curves (``valid``)."""
    search_fraction: float | None = None
    """Documents held out for importance calibration and the sub-network search (``search``); None: as
    valid_fraction. The search chooses on these and never sees valid or test."""
    test_fraction: float | None = None
    """Documents held out for the final number, measured once per run (``test``); None: as valid_fraction."""

    def fractions(self) -> tuple[float, float, float]:
        """(valid, search, test) fractions with the defaults resolved."""
        return (self.valid_fraction, self.valid_fraction if self.search_fraction is None else self.search_fraction,
                self.valid_fraction if self.test_fraction is None else self.test_fraction)


@dataclass
class TrainSpec:
    """One training run (teacher pretraining, the KD student, the random-init baseline)."""

    steps: int = 10
    seq_length: int = 64
    micro_batch_size: int = 4
    global_batch_size: int = 8
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 2
    eval_every: int = 5
    """Validation every N steps: the points of the tokens-to-target curves."""
    eval_iters: int = 2
    test_iters: int = 4
    """Micro-batches of the test split evaluated once when the run ends (the number the report gives)."""
    tp: int = 1
    pp: int = 1
    checkpoint_every: int | None = None
    """Checkpoint every N steps (None: four times per run). SIGTERM (preemption, requeue, the SLURM time limit)
    also saves at the step where the run stops, so this only bounds the work a hard kill loses."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recompute (docs/training.md, "Memory and throughput options")."""
    sequence_parallel: bool = False
    """Sequence parallelism over TP (GPU, tp > 1)."""
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    distributed_optimizer: bool = True
    """Optimizer state sharded over DP (megatron's distributed optimizer)."""


@dataclass
class SearchSpec:
    param_fraction: float = 0.34
    """Parameter budget of the student as a fraction of the teacher's parameters."""
    tolerance: float = 0.05
    """Accepted relative deviation from the budget."""
    strategy: Literal["evolutionary", "random", "proxy"] = "evolutionary"
    granularity: Literal["coarse_uniform", "fine_uniform", "coarse_layerwise", "fine_layerwise"] = "fine_uniform"
    """Uniform students are standard architectures (plain HF export); layer-wise ones search per layer."""
    evaluations: int = 12
    """Distinct sub-networks whose validation perplexity is measured."""
    population: int = 6
    """Evolutionary: random initial candidates and elite size."""
    round_to: int = 8
    """hidden / ffn choices are multiples of this."""
    calibration_batches: int = 2
    """Micro-batches (of 4 sequences) used to score importance."""
    eval_batches: int = 2
    """Validation micro-batches (of 4 sequences) per candidate."""
    seed: int = 0
    tp: int = 1
    """Tensor-parallel size of the teacher in importance and search (raise it when the teacher does not fit one
    GPU). Their ranks (``launch.eval_ranks``) must be a multiple of tp x pp; the quotient is data parallelism
    over the calibration / evaluation batches, which must divide ``calibration_batches`` and ``eval_batches``."""
    pp: int = 1
    """Pipeline-parallel size of the teacher in importance and search (see ``tp``)."""


@dataclass
class DistillSpec:
    alpha_ce: float = 0.0
    beta_kd: float = 1.0
    temperature: float = 1.0
    baseline_kd: bool = False
    """Distill the random-init baseline too (isolates the init); default: plain pretraining, as in the paper."""
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta_jsd: float = 0.5
    """JSD skew (0: forward KL, 1: reverse KL)."""
    top_k: int | None = None
    """Distill against the teacher's renormalised top-k only (None: the full distribution)."""
    fused_output: Literal["auto", "on", "off"] = "auto"
    """Loss from the final hidden states chunk by chunk, never the full [b, s, V/tp] logits (auto: where it saves memory)."""


@dataclass
class PipelineConfig:
    out_dir: str = "subnet_out"
    hf_model: str | None = None
    """A local HF model directory to start from (imported as the teacher; its tokenizer prepares the data).
    None: pretrain ``teacher`` on the data first (the embedded default)."""
    teacher: TeacherModel = field(default_factory=TeacherModel)
    data: DataSpec = field(default_factory=DataSpec)
    teacher_train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=20))
    search: SearchSpec = field(default_factory=SearchSpec)
    student_train: TrainSpec = field(default_factory=TrainSpec)
    """Used for both the KD student and the random-init baseline: same data order, same tokens."""
    distill: DistillSpec = field(default_factory=DistillSpec)
    generate_prompt: str = "def main(" 
    """Prompt the exported HF student completes with transformers' generate()."""
    seed: int = 1234

    def validate(self) -> None:
        from nemo_subnet.errors import UserError

        if self.hf_model is not None and not (Path(self.hf_model) / "config.json").is_file():
            raise UserError(f"hf_model {self.hf_model}: no such HF model directory (config.json missing)")
        if not 0 < self.search.param_fraction < 1:
            raise UserError(f"search.param_fraction must be in (0, 1), got {self.search.param_fraction}")
        for name in ("teacher_train", "student_train"):
            spec: TrainSpec = getattr(self, name)
            if spec.steps < 1 or spec.global_batch_size % spec.micro_batch_size:
                raise UserError(f"{name}: steps must be >= 1 and global_batch_size a multiple of micro_batch_size")
            if not 0 <= spec.warmup_steps < spec.steps:
                raise UserError(f"{name}: warmup_steps {spec.warmup_steps} must be at least 0 and fewer than steps {spec.steps}")

    # --- YAML -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineConfig":
        return _from_dict(cls, data, "")

    @classmethod
    def load(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> "PipelineConfig":
        from nemo_subnet.errors import UserError
        from nemo_subnet.training.config import apply_overrides

        path = Path(path)
        if not path.is_file():
            raise UserError(f"pipeline config {path} does not exist")
        return cls.from_dict(apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides))


def _from_dict(cls, data: dict, where: str):
    from nemo_subnet.errors import UserError

    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown keys in {where or 'config'}: {unknown} (known: {sorted(names)})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        kwargs[name] = _from_dict(hint, value, f"{where}{name}.") if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)


def apply_overrides(config: PipelineConfig, overrides: typing.Sequence[str]) -> PipelineConfig:
    """``["search.population=16", ...]`` applied to a config (values parsed as YAML)."""
    from nemo_subnet.training.config import apply_overrides as apply

    return PipelineConfig.from_dict(apply(config.to_dict(), overrides))
