"""Section `hf_parity`: HF import -> logits vs transformers, export -> reload, on the device.

One tiny random model per family (llama, qwen2, gpt_neox, qwen3), built here from a transformers config (`nemo_subnet.models.tiny_hf`:
every weight randomised, norms included; 1001 embedding rows against a 300-token tokenizer, as real
checkpoints have more rows than tokens). fp32: `import_hf`, then the Megatron model's logits against
transformers' on the same device, max abs diff <= 1e-4 (invariant 1); `export_hf`, then the exported
tensors are bitwise the original ones and the reloaded transformers model gives the original logits.
bf16: one model stored in bf16, imported and run in bf16. Different kernels round differently, so both
our bf16 logits and transformers' are compared with the fp32 maths on the same bf16 weights: our mean
abs error must be at most 2x transformers' own (+ 1e-3 of the mean |logit|).
"""

from __future__ import annotations

import torch

from .common import progress
from .profiles import PROFILES

FP32_ATOL = 1e-4
BF16_FACTOR = 2.0


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 29), generator=torch.Generator().manual_seed(0))  # [b, s], odd length


def _hf_logits(path, tokens: torch.Tensor, device: torch.device, dtype=None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    kwargs = {} if dtype is None else {"dtype": dtype}  # default: the stored dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    with torch.no_grad():
        return model(tokens.to(device)).logits.float()  # [b, s, vocab]


def _ours(ckpt, tokens: torch.Tensor) -> torch.Tensor:
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.models.inference import forward_logits

    cfg, model = load_model(ckpt)
    logits = forward_logits(model, cfg, tokens)  # [b, s, vocab] float
    del model
    return logits


def _fp32_family(rec, family: str, root, device: torch.device) -> None:
    from safetensors.torch import load_file

    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.models.tiny_hf import save_hf_model

    hf_dir, ckpt, exported = root / family / "hf", root / family / "ckpt", root / family / "exported"
    save_hf_model(family, hf_dir, seed=1)
    cfg = import_hf(hf_dir, ckpt)
    tokens = _tokens(cfg.vocab_size)
    reference = _hf_logits(hf_dir, tokens, device)
    ours = _ours(ckpt, tokens)
    diff = float((ours - reference).abs().max())
    rec.number(f"{family}.fp32_max_abs_diff", diff)
    rec.check(f"{family}: imported logits == transformers (fp32)", ours.shape == reference.shape and diff <= FP32_ATOL,
              f"max abs diff {diff:.2e} on {device} (tolerance {FP32_ATOL:g})")
    export_hf(ckpt, exported)
    original, written = load_file(hf_dir / "model.safetensors"), load_file(exported / "model.safetensors")
    same = sorted(original) == sorted(written) and all(
        written[k].dtype == v.dtype and torch.equal(written[k], v) for k, v in original.items())
    rec.check(f"{family}: exported tensors == original", same, f"{len(written)} tensors")
    reloaded = _hf_logits(exported, tokens, device)
    diff = float((reloaded - reference).abs().max())
    rec.check(f"{family}: exported model reloads with the original logits", diff <= 1e-6, f"max abs diff {diff:.2e}")


def _bf16(rec, root, device: torch.device) -> None:
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.models.tiny_hf import make_hf_model

    hf_dir, ckpt = root / "bf16" / "hf", root / "bf16" / "ckpt"
    make_hf_model("llama", seed=2).to(torch.bfloat16).save_pretrained(hf_dir)
    cfg = import_hf(hf_dir, ckpt)
    rec.check("bf16: stored dtype kept", cfg.dtype == "bfloat16", cfg.dtype)
    tokens = _tokens(cfg.vocab_size)
    exact = _hf_logits(hf_dir, tokens, device, dtype=torch.float32)  # the same bf16 weights, computed in fp32
    theirs = _hf_logits(hf_dir, tokens, device, dtype=torch.bfloat16)
    ours = _ours(ckpt, tokens)
    scale = exact.abs().mean()
    err_ours, err_theirs = float((ours - exact).abs().mean() / scale), float((theirs - exact).abs().mean() / scale)
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    rec.number("bf16.ours_rel_mean_abs_err", err_ours)
    rec.number("bf16.transformers_rel_mean_abs_err", err_theirs)
    rec.number("bf16.top1_agreement_with_transformers", top1)
    bound = BF16_FACTOR * err_theirs + 1e-3
    rec.check("bf16: imported model as accurate as transformers in bf16", err_ours <= bound,
              f"mean abs error vs fp32 maths {err_ours:.2e} of mean |logit| (transformers bf16: {err_theirs:.2e}; "
              f"bound {BF16_FACTOR:g}x + 1e-3), top-1 agreement with transformers {top1:.1%}")


def run(ctx, rec) -> None:
    from nemo_subnet.runtime import compute_device, init_runtime, shutdown_runtime

    init_runtime(tp=1, pp=1, seed=1234)
    device = compute_device()
    rec.number("device", str(device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    root = ctx.work / "hf"
    try:
        for family in PROFILES[ctx.profile].hf_families:
            progress(rec.section, f"{family}: build, import, compare, export, reload")
            _fp32_family(rec, family, root, device)
        progress(rec.section, "bf16: llama stored in bf16")
        _bf16(rec, root, device)
    finally:
        shutdown_runtime()
