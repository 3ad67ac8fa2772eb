"""Tiny random Hugging Face models for every supported family variant, made locally (never downloaded).

Used by the tests and by the conversion demo: no machine here can fetch weights from a hub.

Every tensor is randomized, norms and biases included: with HF's default init (norm weights 1, biases 0)
a conversion that drops or misplaces them would still pass.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 1001  # odd: not divisible by any TP size, so vocabulary padding is exercised
TOKENIZER_TOKENS = 297
"""Tokens of ``make_tokenizer()``'s tokenizer (byte-level BPE: 256 bytes, 1 special, 40 merges)."""

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=96, max_position_embeddings=128)

VARIANTS = {
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.25, use_parallel_residual=True)),
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(rotary_pct=0.5, use_parallel_residual=False, hidden_act="gelu_new")),
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3_tied": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=256,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                        rope_theta=500000.0)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)),
    # SmolLM2-135M's shape: 9 heads in 3 KV groups (odd: TP=2 cannot split them), head_dim = hidden / 9 as
    # transformers' LlamaConfig requires, tied embeddings, as many embedding rows as the tokenizer has tokens
    "smollm2": ("LlamaConfig", dict(vocab_size=TOKENIZER_TOKENS, hidden_size=144, num_attention_heads=9,
                                    num_key_value_heads=3, tie_word_embeddings=True, rope_theta=100000.0)),
}
FAMILY_VARIANTS = ("gpt_neox", "llama", "qwen2", "qwen3")


def make_hf_config(variant: str, **overrides):
    import transformers

    class_name, extra = VARIANTS[variant]
    return getattr(transformers, class_name)(**{**_COMMON, **extra, **overrides})


def make_hf_model(variant: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_hf_config(variant, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.copy_(0.05 * torch.randn_like(param))
    return model


def make_tokenizer(out_dir: Path, vocab_size: int = 300) -> None:
    """A small byte-level BPE trained on a few lines, saved as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = ["def main():\n    return 0\n", "import os, sys\n", "for i in range(10):\n    print(i)\n"] * 20
    tok.train_from_iterator(lines, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>").save_pretrained(out_dir)


def save_hf_model(variant: str, out_dir: Path, seed: int = 0, with_tokenizer: bool = True, **overrides):
    model = make_hf_model(variant, seed, **overrides)
    model.save_pretrained(out_dir)
    if with_tokenizer:
        make_tokenizer(out_dir)
    return model
