"""nemo-subnet checkpoint -> HF directory that AutoModelForCausalLM / AutoTokenizer load.

Layer-wise sub-networks are zero-padded to uniform sizes first, and heads are padded to the layout the
family's transformers config accepts (``FamilyAdapter.hf_attention_layout``; exact, see uniform.py).
The teacher's config.json is the template for fields the ModelConfig does not determine (token ids,
...); what the sub-network changes is rewritten, per-layer lists included: a depth-pruned student must
not inherit the teacher's ``layer_types`` (transformers requires one entry per layer).
The HF model is instantiated on the meta device (no memory for weights), the converted tensors are
assigned into it, and ``save_pretrained`` writes it, so names, tied weights and file sharding are
exactly what the installed transformers expects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from nemo_subnet.checkpointing import HF_CONFIG, TOKENIZER, atomic_directory, load_model, read_model_config
from nemo_subnet.conversion.adapters import adapter_for_family
from nemo_subnet.conversion.sharding import global_state_from_model
from nemo_subnet.conversion.uniform import pad_to_uniform


_STALE_TEMPLATE_KEYS = (
    "architectures", "torch_dtype", "dtype", "rope_scaling", "rope_theta", "rotary_pct", "rotary_emb_base",
    "head_dim",  # GPT-NeoX derives it from hidden_size / heads; the Llama family writes it
    "layer_types", "mlp_layer_types", "sliding_window", "use_sliding_window",  # per teacher layer / rewritten
)
"""Teacher config.json fields that may not describe the student; the adapter writes what the student needs."""


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Export at TP=1/PP=1 (the runtime must be initialized that way, single process)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt_dir = Path(ckpt_dir)
    stored = read_model_config(ckpt_dir)
    adapter = adapter_for_family(stored.family)
    # a last guard, before any weight is read: search spaces and `extract` already refuse sub-networks the
    # family cannot export (ExportConstraintError names the constraint)
    groups, heads_per_group = adapter.hf_head_layout(stored)
    cfg, model = load_model(ckpt_dir)
    cfg, state = pad_to_uniform(cfg, global_state_from_model(model), groups=groups, heads_per_group=heads_per_group)
    del model
    # Megatron's torch norms keep fp32 weights whatever params_dtype is; store every tensor as the source did
    hf_state = {k: v.to(cfg.torch_dtype) for k, v in adapter.megatron_to_hf(cfg, state).items()}

    template = json.loads((ckpt_dir / HF_CONFIG).read_text()) if (ckpt_dir / HF_CONFIG).is_file() else {}
    for stale in _STALE_TEMPLATE_KEYS:
        template.pop(stale, None)
    raw = {**template, **adapter.hf_config_updates(cfg)}
    model_type = raw.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **raw)
    hf_config.architectures = [adapter.hf_architecture]
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=cfg.torch_dtype)
    expected = set(hf_model.state_dict())
    if cfg.tie_embeddings and "lm_head.weight" in expected and "lm_head.weight" not in hf_state:
        hf_state["lm_head.weight"] = next(v for k, v in hf_state.items() if k.endswith("embed_tokens.weight") or k.endswith("embed_in.weight"))
    hf_model.load_state_dict(hf_state, strict=True, assign=True)
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        hf_model.save_pretrained(tmp)
        if (ckpt_dir / TOKENIZER).is_dir():
            for path in (ckpt_dir / TOKENIZER).iterdir():
                shutil.copy2(path, tmp / path.name)
    return Path(out_dir)
