"""HF directory or GGUF file -> nemo-subnet checkpoint (Megatron dist checkpoint + model.yaml + tokenizer).

Runs on however many ranks the launcher started: a single process converts at TP=1/PP=1; under
torchrun with tp*pp ranks each rank reads only its shard's tensors and saves it, so a model larger than
one host's memory can be converted. The checkpoint itself is layout-free: it loads at any TP/PP.
A GGUF file is dequantized by transformers into memory first (gguf_io.py) and then takes the same path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from nemo_subnet.checkpointing import atomic_directory, save_model
from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.conversion.adapters.base import fuse_tensors
from nemo_subnet.conversion.hf_io import open_hf_weights, read_hf_config, save_hf_tokenizer
from nemo_subnet.conversion.sharding import load_global_state
from nemo_subnet.models.builder import build_gpt_model
from nemo_subnet.models.config import ModelConfig


def model_config_from_hf(hf_dir: str | Path) -> tuple[ModelConfig, dict]:
    hf_config, raw = read_hf_config(hf_dir)
    adapter = adapter_for_model_type(raw["model_type"])
    cfg = adapter.config_from_hf(hf_config)
    return cfg, raw


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, tp: int = 1, pp: int = 1, overwrite: bool = False) -> ModelConfig:
    """Convert; ``tp``/``pp`` are validated against the model (and must match the runtime's layout)."""
    from megatron.core import parallel_state

    cfg, raw = model_config_from_hf(hf_dir)
    cfg.check_parallel(tp, pp)
    adapter = adapter_for_model_type(raw["model_type"])
    runtime_layout = (parallel_state.get_tensor_model_parallel_world_size(),
                      parallel_state.get_pipeline_model_parallel_world_size())
    if runtime_layout not in ((1, 1), (tp, pp)):
        raise ValueError(f"runtime layout tp={runtime_layout[0]} pp={runtime_layout[1]} does not match --tp {tp} --pp {pp}")
    reader = open_hf_weights(hf_dir, adapter.disk_aliases)
    cfg.dtype = _stored_dtype(reader, adapter, cfg)

    model = build_gpt_model(cfg, perform_initialization=False)
    table = adapter.rule_table(cfg)
    missing = sorted({h for names, _ in table.values() for h in names} - reader.names())
    if missing:
        raise ValueError(f"{hf_dir}: tensors missing for {raw['model_type']}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def fetch(name: str):
        # convert one Megatron tensor on demand: memory holds one layer's HF tensors at a time
        hf_names, fuse = table[name]
        return fuse_tensors(cfg, fuse, [reader(h) for h in hf_names])

    load_global_state(model, cfg, fetch)
    with tempfile.TemporaryDirectory() as tok_tmp:
        tok_dir = Path(tok_tmp) / "tokenizer"
        tok_dir.mkdir()
        save_hf_tokenizer(hf_dir, tok_dir)
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            save_model(model, cfg, tmp, hf_config=raw, tokenizer_dir=tok_dir)
    return cfg


def _stored_dtype(reader, adapter, cfg: ModelConfig) -> str:
    first = adapter.active_rules(cfg)[0][1][0]
    return str(reader(first).dtype).removeprefix("torch.")
