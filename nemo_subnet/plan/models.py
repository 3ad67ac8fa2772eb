"""Model descriptions the planner accepts: a preset name, an HF directory, a nemo-subnet checkpoint or a
model.yaml, and a student derived from the teacher under a parameter budget.

Presets are transformers configs with the published shapes, translated by the family adapters (the same
path ``nemo-subnet import-hf`` takes), so a preset and the HF checkpoint it names plan identically. Nothing
is downloaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nemo_subnet.models.config import ModelConfig

_PYTHIA = dict(vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
               tie_word_embeddings=False, hidden_act="gelu")
_LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, hidden_act="silu",
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192})

# name -> (transformers config class, its arguments)
PRESETS: dict[str, tuple[str, dict]] = {
    "pythia-70m": ("GPTNeoXConfig", dict(_PYTHIA, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                         intermediate_size=2048)),
    "pythia-160m": ("GPTNeoXConfig", dict(_PYTHIA, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072)),
    "pythia-410m": ("GPTNeoXConfig", dict(_PYTHIA, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                          intermediate_size=4096)),
    "pythia-1b": ("GPTNeoXConfig", dict(_PYTHIA, hidden_size=2048, num_hidden_layers=16, num_attention_heads=8,
                                        intermediate_size=8192)),
    "llama-3.2-1b": ("LlamaConfig", dict(_LLAMA3, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                         num_key_value_heads=8, intermediate_size=8192, tie_word_embeddings=True,
                                         rope_scaling=dict(_LLAMA3["rope_scaling"], factor=32.0))),
    "llama-3.1-8b": ("LlamaConfig", dict(_LLAMA3, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=8, intermediate_size=14336, tie_word_embeddings=False)),
    "llama-3.1-70b": ("LlamaConfig", dict(_LLAMA3, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                                          num_key_value_heads=8, intermediate_size=28672, tie_word_embeddings=False)),
}


def preset_config(name: str) -> ModelConfig:
    import transformers

    from nemo_subnet.conversion.adapters import adapter_for_model_type

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    class_name, kwargs = PRESETS[name]
    hf = getattr(transformers, class_name)(**kwargs)
    return adapter_for_model_type(hf.model_type).config_from_hf(hf)


def resolve_model(spec: str) -> ModelConfig:
    """A preset name, an HF model directory (config.json) or .gguf file, a nemo-subnet checkpoint (model.yaml + weights/)
    or a model.yaml file; errors name what was looked for."""
    if spec in PRESETS:
        return preset_config(spec)
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        from nemo_subnet.conversion.hf_import import model_config_from_hf

        return model_config_from_hf(path)[0]
    if path.is_file():
        return ModelConfig.load(path)
    if path.is_dir():
        if (path / "model.yaml").is_file():
            return ModelConfig.load(path / "model.yaml")
        if (path / "config.json").is_file():
            from nemo_subnet.conversion.hf_import import model_config_from_hf

            return model_config_from_hf(path)[0]
        raise ValueError(f"{path} has neither model.yaml (a nemo-subnet checkpoint) nor config.json (an HF model)")
    raise ValueError(f"model {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file or directory")


def uniform_subnet(teacher: ModelConfig, budget: int, round_to: int = 64) -> ModelConfig:
    """The widest uniform sub-network of ``teacher`` with at most ``budget`` parameters: hidden size, FFN
    width and head count scaled by one factor (head dimension and depth kept, widths rounded down to
    ``round_to``, query groups a divisor of the heads). A stand-in for the searched sub-network when only
    a budget is known: same depth and vocabulary, so its memory per parameter is close."""
    from nemo_subnet.models.counting import count_parameters

    if teacher.is_layerwise:
        raise ValueError("a parameter budget needs a uniform teacher (this one has per-layer sizes)")

    def shaped(f: float) -> ModelConfig:
        heads = max(1, int(teacher.num_attention_heads * f))
        groups = max(1, min(heads, round(teacher.num_query_groups * f)))
        while heads % groups:
            groups -= 1
        width = lambda x: max(round_to, int(x * f) // round_to * round_to)  # noqa: E731
        return dataclasses.replace(teacher, hidden_size=width(teacher.hidden_size), num_attention_heads=heads,
                                   num_query_groups=groups, ffn_hidden_size=width(teacher.ffn_hidden_size))

    smallest = count_parameters(shaped(0.0))
    if budget < smallest:
        raise ValueError(f"budget {budget:,} parameters is below the smallest uniform sub-network of the teacher "
                         f"({smallest:,}: embeddings alone take {teacher.padded_vocab_size * round_to * 2:,})")
    if budget >= count_parameters(teacher):
        raise ValueError(f"budget {budget:,} is not smaller than the teacher ({count_parameters(teacher):,} parameters)")
    lo, hi = 0.0, 1.0
    for _ in range(40):  # parameters grow monotonically with f (up to rounding)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count_parameters(shaped(mid)) <= budget else (lo, mid)
    return shaped(lo)
