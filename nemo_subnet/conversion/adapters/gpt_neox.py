"""GPT-NeoX / Pythia: LayerNorm with biases, parallel residual, partial rotary, GeLU MLP, untied output.

HF's fused ``query_key_value`` is laid out per head as [q_h | k_h | v_h], which is exactly Megatron's
``linear_qkv`` layout for multi-head attention (one query group per head), so it is copied as is.
"""

from __future__ import annotations

from nemo_subnet.conversion.adapters.base import ExportConstraintError, FamilyAdapter, Fuse, WeightRule, rope_parameters
from nemo_subnet.models.config import Family, ModelConfig

_ACTS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
         "relu": "relu", "silu": "silu"}

_HF_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}

_L = "gpt_neox.layers.{i}."
_M = "decoder.layers.{i}."


def _pair(mg: str, hf: str) -> tuple[WeightRule, WeightRule]:
    return WeightRule(mg + ".weight", (hf + ".weight",)), WeightRule(mg + ".bias", (hf + ".bias",))


class GPTNeoXAdapter(FamilyAdapter):
    model_types = ("gpt_neox",)
    hf_architecture = "GPTNeoXForCausalLM"
    disk_aliases = {"embed_out.weight": "lm_head.weight"}
    rules = (
        WeightRule("embedding.word_embeddings.weight", ("gpt_neox.embed_in.weight",), Fuse.VOCAB),
        *_pair(_M + "input_layernorm", _L + "input_layernorm"),
        *_pair(_M + "self_attention.linear_qkv", _L + "attention.query_key_value"),
        *_pair(_M + "self_attention.linear_proj", _L + "attention.dense"),
        *_pair(_M + "pre_mlp_layernorm", _L + "post_attention_layernorm"),
        *_pair(_M + "mlp.linear_fc1", _L + "mlp.dense_h_to_4h"),
        *_pair(_M + "mlp.linear_fc2", _L + "mlp.dense_4h_to_h"),
        *_pair("decoder.final_layernorm", "gpt_neox.final_layer_norm"),
        WeightRule("output_layer.weight", ("lm_head.weight",), Fuse.VOCAB, when=lambda cfg: not cfg.tie_embeddings),
    )

    def config_from_hf(self, hf) -> ModelConfig:
        rope = rope_parameters(hf)
        if rope["rope_type"] != "default":
            raise ValueError(f"gpt_neox rope_type {rope['rope_type']!r} is not supported (supported: 'default')")
        if hf.hidden_act not in _ACTS:
            raise ValueError(f"hidden_act {hf.hidden_act!r} is not supported (supported: {sorted(_ACTS)})")
        if not getattr(hf, "attention_bias", True):
            raise ValueError("gpt_neox with attention_bias=False is not supported")
        return ModelConfig(
            family=Family.GPT_NEOX, vocab_size=hf.vocab_size, hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers, num_attention_heads=hf.num_attention_heads,
            num_query_groups=hf.num_attention_heads, ffn_hidden_size=hf.intermediate_size,
            kv_channels=hf.hidden_size // hf.num_attention_heads,
            max_position_embeddings=hf.max_position_embeddings, normalization="LayerNorm",
            norm_eps=hf.layer_norm_eps, activation=_ACTS[hf.hidden_act], gated_mlp=False,
            add_bias_linear=True, add_qkv_bias=True, parallel_residual=hf.use_parallel_residual,
            rotary_percent=rope.get("partial_rotary_factor", 1.0), rotary_base=rope["rope_theta"],
            tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            init_method_std=getattr(hf, "initializer_range", 0.02),
        )

    def hf_attention_layout(self, hidden: int, query_groups: int, heads_per_group: int, head_dim: int,
                            limit: tuple[int, int] | None = None) -> tuple[int, int]:
        # transformers' GPT-NeoX attention is hidden_size wide with head size hidden_size / heads: the
        # exported model has hidden_size / head_dim heads, the sub-network's plus zero heads.
        if hidden % head_dim:
            raise ExportConstraintError(
                f"gpt_neox: hidden_size {hidden} is not a multiple of the head size {head_dim} (transformers' GPT-NeoX "
                f"derives the head size as hidden_size / num_attention_heads); allowed: hidden sizes that are "
                f"multiples of {head_dim}")
        heads = query_groups * heads_per_group
        if heads > hidden // head_dim:
            raise ExportConstraintError(
                f"gpt_neox: {heads} attention heads of size {head_dim} need hidden_size >= {heads * head_dim}, got "
                f"{hidden} (transformers' GPT-NeoX attention is hidden_size wide); allowed: heads x {head_dim} <= "
                f"hidden_size, at most {hidden // head_dim} at hidden_size {hidden}")
        return hidden // head_dim, 1

    def hf_config_updates(self, cfg: ModelConfig) -> dict:
        if cfg.kv_channels * cfg.num_attention_heads != cfg.hidden_size:
            raise ValueError("GPT-NeoX in transformers needs hidden_size == num_attention_heads * head size, got "
                             f"{cfg.hidden_size} != {cfg.num_attention_heads} * {cfg.kv_channels}")
        return {"model_type": "gpt_neox", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
                "intermediate_size": cfg.ffn_hidden_size, "tie_word_embeddings": cfg.tie_embeddings,
                "max_position_embeddings": cfg.max_position_embeddings, "layer_norm_eps": cfg.norm_eps,
                "hidden_act": _HF_ACTS[cfg.activation], "use_parallel_residual": cfg.parallel_residual,
                "attention_bias": True, "initializer_range": cfg.init_method_std,
                "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rotary_base,
                                    "partial_rotary_factor": cfg.rotary_percent}}
