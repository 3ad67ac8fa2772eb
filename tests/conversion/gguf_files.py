"""Write tiny GGUF files from tiny HF models, as llama.cpp's converter lays them out (test helper).

Names come from gguf's own HF -> GGUF tensor map; Llama's q/k rows are permuted the way llama.cpp's
``convert_hf_to_gguf.py`` does (transformers undoes it on load); 2-D weights are stored in the requested
type (quantized with gguf's own quantizers), 1-D norms and biases in F32, as llama.cpp stores them; a
tied output layer is left out (transformers infers tie_word_embeddings from its absence); the HF
tokenizer is embedded as a byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: per head, the two rotary halves interleaved."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer_dir: Path) -> None:
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    specials = {token["id"]: token["content"] for token in spec["added_tokens"]}
    tokens = [None] * (max([*vocab.values(), *specials]) + 1)
    for token, index in {**vocab, **{v: k for k, v in specials.items()}}.items():
        tokens[index] = token
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    eos = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["eos_token"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(eos))
    writer.add_eos_token_id(tokens.index(eos))
    writer.add_add_bos_token(False)


def write_gguf(model, path: Path, qtype: gguf.GGMLQuantizationType, tokenizer_dir: Path | None = None) -> Path:
    """``model`` (a transformers Llama / Qwen2 / Qwen3) as a GGUF file of 2-D weights in ``qtype``."""
    config = model.config
    arch = ARCHS[config.model_type]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if tokenizer_dir is not None:
        _write_tokenizer(writer, tokenizer_dir)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        data = tensor.float().numpy()
        if arch is gguf.MODEL_ARCH.LLAMA and name.endswith("attn_q.weight"):
            data = _permute(data, config.num_attention_heads)
        elif arch is gguf.MODEL_ARCH.LLAMA and name.endswith("attn_k.weight"):
            data = _permute(data, config.num_key_value_heads)
        if data.ndim == 1 or qtype is gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
