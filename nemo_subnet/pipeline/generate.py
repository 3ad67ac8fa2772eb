"""Load an exported student with plain transformers and complete a prompt: the proof that export worked."""

from __future__ import annotations

from pathlib import Path


def generate(hf_dir: str | Path, prompt: str, max_new_tokens: int = 48) -> str:
    """Greedy completion of ``prompt`` by the HF model in ``hf_dir`` (its own tokenizer, offline)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids  # [1, s]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0)
    return tokenizer.decode(out[0], skip_special_tokens=True)
