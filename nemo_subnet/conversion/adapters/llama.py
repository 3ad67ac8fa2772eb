"""Llama: RMSNorm, SwiGLU MLP, grouped-query attention, RoPE (with Llama-3 scaling), tied or untied.

Qwen2 and Qwen3 differ only in a few switches and derive from this adapter (qwen2.py, qwen3.py).
"""

from __future__ import annotations

from nemo_subnet.conversion.adapters.base import ExportConstraintError, FamilyAdapter, Fuse, WeightRule, rope_parameters
from nemo_subnet.models.config import Family, ModelConfig, RopeScaling

_L = "model.layers.{i}."
_M = "decoder.layers.{i}."
_ACTS = {"silu": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def _qkv(suffix: str) -> tuple[str, ...]:
    return tuple(f"{_L}self_attn.{p}_proj.{suffix}" for p in "qkv")


class LlamaAdapter(FamilyAdapter):
    model_types = ("llama",)
    hf_architecture = "LlamaForCausalLM"
    family = Family.LLAMA
    hidden_divisible_by_heads = True
    """transformers' LlamaConfig validates hidden_size % num_attention_heads == 0; the Qwen2/Qwen3 configs
    (explicit head_dim) do not (transformers 5.23)."""
    rules = (
        WeightRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), Fuse.VOCAB),
        WeightRule(_M + "input_layernorm.weight", (_L + "input_layernorm.weight",)),
        WeightRule(_M + "self_attention.linear_qkv.weight", _qkv("weight"), Fuse.QKV),
        WeightRule(_M + "self_attention.linear_qkv.bias", _qkv("bias"), Fuse.QKV, when=lambda c: c.add_qkv_bias),
        WeightRule(_M + "self_attention.q_layernorm.weight", (_L + "self_attn.q_norm.weight",), when=lambda c: c.qk_layernorm),
        WeightRule(_M + "self_attention.k_layernorm.weight", (_L + "self_attn.k_norm.weight",), when=lambda c: c.qk_layernorm),
        WeightRule(_M + "self_attention.linear_proj.weight", (_L + "self_attn.o_proj.weight",)),
        WeightRule(_M + "self_attention.linear_proj.bias", (_L + "self_attn.o_proj.bias",), when=lambda c: c.add_bias_linear),
        WeightRule(_M + "pre_mlp_layernorm.weight", (_L + "post_attention_layernorm.weight",)),
        WeightRule(_M + "mlp.linear_fc1.weight", (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), Fuse.GATE_UP),
        WeightRule(_M + "mlp.linear_fc1.bias", (_L + "mlp.gate_proj.bias", _L + "mlp.up_proj.bias"), Fuse.GATE_UP,
                   when=lambda c: c.add_bias_linear),
        WeightRule(_M + "mlp.linear_fc2.weight", (_L + "mlp.down_proj.weight",)),
        WeightRule(_M + "mlp.linear_fc2.bias", (_L + "mlp.down_proj.bias",), when=lambda c: c.add_bias_linear),
        WeightRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        WeightRule("output_layer.weight", ("lm_head.weight",), Fuse.VOCAB, when=lambda c: not c.tie_embeddings),
    )

    def biases(self, hf) -> tuple[bool, bool]:
        """(add_qkv_bias, add_bias_linear) for this HF config."""
        attention_bias, mlp_bias = bool(getattr(hf, "attention_bias", False)), bool(getattr(hf, "mlp_bias", False))
        if attention_bias != mlp_bias:
            raise ValueError(f"llama with attention_bias={attention_bias} but mlp_bias={mlp_bias} is not supported "
                             "(Megatron's add_bias_linear covers o_proj and the MLP together)")
        return attention_bias, attention_bias

    def config_from_hf(self, hf) -> ModelConfig:
        if getattr(hf, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported (use_sliding_window must be false)")
        if hf.hidden_act not in _ACTS:
            raise ValueError(f"hidden_act {hf.hidden_act!r} is not supported (supported: {sorted(_ACTS)})")
        rope = rope_parameters(hf)
        scaling = None
        if rope["rope_type"] == "llama3":
            scaling = RopeScaling(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                                  high_freq_factor=rope["high_freq_factor"],
                                  original_max_position_embeddings=rope["original_max_position_embeddings"])
        elif rope["rope_type"] != "default":
            raise ValueError(f"rope_type {rope['rope_type']!r} is not supported (supported: 'default', 'llama3')")
        qkv_bias, linear_bias = self.biases(hf)
        kv_heads = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        return ModelConfig(
            family=self.family, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads, num_query_groups=kv_heads,
            ffn_hidden_size=hf.intermediate_size, kv_channels=head_dim,
            max_position_embeddings=hf.max_position_embeddings, normalization="RMSNorm", norm_eps=hf.rms_norm_eps,
            activation=_ACTS[hf.hidden_act], gated_mlp=True, add_bias_linear=linear_bias, add_qkv_bias=qkv_bias,
            qk_layernorm=self.family is Family.QWEN3, rotary_percent=1.0, rotary_base=rope["rope_theta"],
            rope_scaling=scaling, tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            init_method_std=getattr(hf, "initializer_range", 0.02),
        )

    def hf_attention_layout(self, hidden: int, query_groups: int, heads_per_group: int, head_dim: int,
                            limit: tuple[int, int] | None = None) -> tuple[int, int]:
        if not self.hidden_divisible_by_heads:
            return query_groups, heads_per_group
        layout = padded_head_layout(hidden, query_groups, heads_per_group, limit)
        if layout is None:
            within = f", up to the model's {limit[0]} x {limit[1]}" if limit else ""
            raise ExportConstraintError(
                f"{self.family.value}: transformers' LlamaConfig needs hidden_size to be a multiple of "
                f"num_attention_heads; hidden_size {hidden} is a multiple of no head layout g x p with g >= "
                f"{query_groups} query groups and p >= {heads_per_group} heads per group{within} (the export pads "
                f"with zero heads to reach one); allowed: hidden sizes that are multiples of "
                f"{query_groups * heads_per_group}"
                + (f" or of {limit[0] * limit[1]}" if limit and limit[0] * limit[1] != query_groups * heads_per_group else "")
                + ", or fewer heads")
        return layout

    def hf_config_updates(self, cfg: ModelConfig) -> dict:
        rope = {"rope_type": "default", "rope_theta": cfg.rotary_base}
        if cfg.rope_scaling is not None:
            rope = {**rope, "rope_type": "llama3", **vars(cfg.rope_scaling)}
        out = {"model_type": self.model_types[0], "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
               "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
               "num_key_value_heads": cfg.num_query_groups, "intermediate_size": cfg.ffn_hidden_size,
               "head_dim": cfg.kv_channels, "tie_word_embeddings": cfg.tie_embeddings,
               "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
               "hidden_act": {v: k for k, v in _ACTS.items()}[cfg.activation],
               "initializer_range": cfg.init_method_std, "rope_parameters": rope}
        if self.family is Family.LLAMA:
            out.update(attention_bias=cfg.add_qkv_bias, mlp_bias=cfg.add_bias_linear)
        else:
            # one entry per exported layer (never the teacher's list): every layer is full causal attention,
            # as in the Megatron model (sliding windows are refused at import)
            out.update(layer_types=["full_attention"] * cfg.num_layers, use_sliding_window=False, sliding_window=None)
        return out


def padded_head_layout(hidden: int, query_groups: int, heads_per_group: int,
                       limit: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """Smallest (groups, heads per group) >= the given ones, <= ``limit``, whose head count divides ``hidden``
    (fewest groups among equals: zero K/V heads cost cache), or None. Exact: extra heads are zero (uniform.py)."""
    max_groups, max_per_group = limit or (hidden, hidden)
    divisors = sorted({d for i in range(1, int(hidden ** 0.5) + 1) if hidden % i == 0 for d in (i, hidden // i)})
    for heads in (d for d in divisors if d >= query_groups * heads_per_group):
        for groups in range(query_groups, min(heads // heads_per_group, max_groups) + 1):
            if heads % groups == 0 and heads // groups <= max_per_group:
                return groups, heads // groups
    return None
