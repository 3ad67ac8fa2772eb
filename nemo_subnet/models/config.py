"""Family-neutral description of a decoder LM, and its translation to Megatron's TransformerConfig.

``ModelConfig`` is what we store next to every checkpoint (``model.yaml``). It holds only what defines
the function the model computes; parallel layout and precision are runtime choices passed separately,
so one checkpoint loads at any TP/PP.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml
from megatron.core.transformer.transformer_config import TransformerConfig

from nemo_subnet.files import write_text_atomic


class Family(str, enum.Enum):
    GPT_NEOX = "gpt_neox"
    LLAMA = "llama"
    QWEN2 = "qwen2"
    QWEN3 = "qwen3"


Activation = Literal["gelu", "gelu_tanh", "silu", "relu"]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "silu": F.silu, "relu": F.relu}


@dataclass
class RopeScaling:
    """Llama-3 style frequency scaling (HF ``rope_type: llama3``)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    family: Family
    vocab_size: int
    """True vocabulary size (the tokenizer's); the embedding is padded beyond it, see padded_vocab_size."""
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    """Key/value heads (GQA); equal to num_attention_heads for multi-head attention."""
    ffn_hidden_size: int
    kv_channels: int
    """Head dimension."""
    max_position_embeddings: int
    normalization: Literal["LayerNorm", "RMSNorm"]
    norm_eps: float
    activation: Activation
    gated_mlp: bool
    add_bias_linear: bool
    """Biases on linear_proj, linear_fc1, linear_fc2."""
    add_qkv_bias: bool
    qk_layernorm: bool = False
    parallel_residual: bool = False
    """GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)) instead of the sequential residual."""
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    init_method_std: float = 0.02
    make_vocab_size_divisible_by: int = 128
    """Padding granularity of the vocabulary; independent of TP so checkpoints reshard freely."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are stored in (the source checkpoint's; a trained model's, its run's precision) and that
    every stage loading the checkpoint computes in unless told otherwise (importance, search, extract, export)."""
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_num_attention_heads: list[int] | None = None
    """Per-layer sizes of a layer-wise heterogeneous model (an extracted sub-network); None = uniform.
    When set, the scalar fields above hold the largest value over layers."""
    layer_num_query_groups: list[int] | None = None
    layer_ffn_hidden_size: list[int] | None = None

    def __post_init__(self):
        self.family = Family(self.family)
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)

    @property
    def is_layerwise(self) -> bool:
        return any(x is not None for x in (self.layer_num_attention_heads, self.layer_num_query_groups,
                                           self.layer_ffn_hidden_size))

    def layer_sizes(self, layer: int) -> tuple[int, int, int]:
        """(attention heads, query groups, ffn neurons) of global layer ``layer``."""
        pick = lambda per_layer, default: default if per_layer is None else per_layer[layer]  # noqa: E731
        return (pick(self.layer_num_attention_heads, self.num_attention_heads),
                pick(self.layer_num_query_groups, self.num_query_groups),
                pick(self.layer_ffn_hidden_size, self.ffn_hidden_size))

    @property
    def padded_vocab_size(self) -> int:
        step = self.make_vocab_size_divisible_by
        return int(math.ceil(self.vocab_size / step) * step)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def stored_as(self, dtype: torch.dtype) -> "ModelConfig":
        """This config with ``dtype`` saying the weights are held in ``dtype``: what a checkpoint of a model
        trained in another precision than its source's must record (a bf16 run from an fp32 init or random
        YAML stores bf16 weights; recorded as float32, every later stage would reload them in fp32)."""
        names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
        if dtype not in names:
            raise ValueError(f"weights in {dtype} cannot be recorded; allowed: {', '.join(names.values())}")
        return dataclasses.replace(self, dtype=names[dtype])

    def check_parallel(self, tp: int, pp: int) -> None:
        """Raise ValueError naming the dimension that TP or PP cannot split."""
        problems = []
        for layer in range(self.num_layers) if self.is_layerwise else [None]:
            heads, groups, ffn = self.layer_sizes(layer or 0)
            where = "" if layer is None else f" in layer {layer}"
            if heads % tp:
                problems.append(f"num_attention_heads={heads}{where} is not divisible by tp={tp}")
            if groups % tp:
                problems.append(f"num_query_groups={groups}{where} is not divisible by tp={tp}")
            if ffn % tp:
                problems.append(f"ffn_hidden_size={ffn}{where} is not divisible by tp={tp}")
        if self.padded_vocab_size % tp:
            problems.append(f"padded vocab {self.padded_vocab_size} is not divisible by tp={tp}")
        if self.num_layers % pp:
            problems.append(f"num_layers={self.num_layers} is not divisible by pp={pp}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["family"] = self.family.value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def initialize_on_host(perform_initialization: bool, on_gpu: bool) -> bool:
    """Megatron's ``use_cpu_initialization``: draw random weights on the host, then move them to the GPU.

    A random init then depends on neither TP nor the device: megatron draws each TP-sharded weight whole from
    the host's default generator (seeded per pipeline stage by ``init_runtime``) and keeps this rank's slice,
    so TP=1 and TP=2, CPU and GPU, get the same weights. Its GPU initialization instead draws each shard from
    the rank's own model-parallel stream (seed + 2718 + tp_rank): a TP=2 init would differ from TP=1's.
    Cost on GPU: each rank draws the full (unsharded) weights on the host, once, for a random init only; a
    model built to receive a checkpoint (``perform_initialization=False``) allocates on the GPU directly."""
    return perform_initialization or not on_gpu


def to_transformer_config(cfg: ModelConfig, tp: int = 1, pp: int = 1, *, params_dtype: torch.dtype | None = None,
                          perform_initialization: bool = True, execution=None):
    """Megatron TransformerConfig for ``cfg`` at a given layout. Fusions off: they need CUDA/apex and
    change numerics; the GPU path turns on what it wants through the returned object. ``execution``
    (an ``execution.ExecutionOptions``) sets activation recompute and sequence parallelism."""
    cfg.check_parallel(tp, pp)
    execution_fields = {} if execution is None else execution.transformer_fields()
    params_dtype = params_dtype or cfg.torch_dtype
    on_gpu = torch.cuda.is_available()
    config_class, extra = TransformerConfig, {}
    if cfg.is_layerwise:
        config_class = LayerwiseTransformerConfig
        extra = {"layer_overrides": [
            dict(zip(("num_attention_heads", "num_query_groups", "ffn_hidden_size"), cfg.layer_sizes(i)))
            for i in range(cfg.num_layers)]}
    return config_class(
        **extra,
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.kv_channels,
        normalization=cfg.normalization,
        layernorm_epsilon=cfg.norm_eps,
        add_bias_linear=cfg.add_bias_linear,
        add_qkv_bias=cfg.add_qkv_bias,
        gated_linear_unit=cfg.gated_mlp,
        activation_func=ACTIVATIONS[cfg.activation],
        qk_layernorm=cfg.qk_layernorm,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=initialize_on_host(perform_initialization, on_gpu),
        perform_initialization=perform_initialization,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        **{"sequence_parallel": False, **execution_fields},
    )



@dataclasses.dataclass
class LayerwiseTransformerConfig(TransformerConfig):
    """Per-layer heads / query groups / FFN size through Megatron's own heterogeneous-layer hook:
    TransformerBlock asks ``get_config_for_layer`` when ``heterogeneous_block_specs`` is set."""

    layer_overrides: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        self.heterogeneous_block_specs = True

    def get_config_for_layer(self, layer_number: int) -> TransformerConfig:
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransformerConfig) if f.init}
        base["heterogeneous_block_specs"] = False
        return TransformerConfig(**{**base, **self.layer_overrides[layer_number - 1]})
