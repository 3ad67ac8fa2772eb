"""`make demo`: the embedded-default run of nemo-subnet.

Until the search-then-pretrain recipe lands, the demo exercises the foundation end to end on every
supported family: make a small random HF model locally (no hub is reachable), import it into Megatron,
compare logits with transformers, export it back, and compare every tensor and greedy generations.
Results go to ``<out>/parity.json`` and a table on the console.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def _parity_for(variant: str, out: Path) -> dict:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.conversion.hf_import import import_hf
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.models.tiny_hf import save_hf_model

    start = time.perf_counter()
    hf_dir, ckpt_dir, exported_dir = out / "hf" / variant, out / "checkpoints" / variant, out / "exported" / variant
    hf_model = save_hf_model(variant, hf_dir, seed=0)
    import_hf(hf_dir, ckpt_dir, overwrite=True)
    cfg, model = load_model(ckpt_dir)
    tokens = torch.randint(0, cfg.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits_diff = (forward_logits(model, cfg, tokens) - hf_model(tokens).logits).abs().max().item()
    export_hf(ckpt_dir, exported_dir, overwrite=True)
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(exported_dir / "model.safetensors")
    bitwise = sorted(original) == sorted(exported) and all(torch.equal(original[k], exported[k]) for k in original)
    reloaded = AutoModelForCausalLM.from_pretrained(exported_dir).eval()
    prompt, kwargs = tokens[:2, :8], dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    same_generation = torch.equal(reloaded.generate(prompt, **kwargs), hf_model.generate(prompt, **kwargs))
    return {"variant": variant, "family": cfg.family.value, "params": sum(p.numel() for p in hf_model.parameters()),
            "max_abs_logit_diff": logits_diff, "round_trip_bitwise": bitwise, "generate_equal": same_generation,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output directory")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from rich.console import Console
    from rich.table import Table

    from nemo_subnet.models.tiny_hf import VARIANTS
    from nemo_subnet.runtime import init_runtime, shutdown_runtime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    init_runtime(tp=1, pp=1, seed=0)
    rows = []
    with console.status("converting") as status:
        for variant in VARIANTS:
            status.update(f"HF -> Megatron -> HF: {variant}")
            rows.append(_parity_for(variant, out))
    shutdown_runtime()

    table = Table(title="HF <-> Megatron parity (fp32, CPU)")
    for column in ("variant", "params", "max |logit diff|", "round trip bitwise", "generate() equal", "s"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["variant"], f"{r['params']:,}", f"{r['max_abs_logit_diff']:.2e}", str(r["round_trip_bitwise"]),
                      str(r["generate_equal"]), f"{r['seconds']:.1f}")
    console.print(table)
    tmp = out / "parity.json.tmp"
    tmp.write_text(json.dumps(rows, indent=2))
    tmp.replace(out / "parity.json")
    ok = all(r["max_abs_logit_diff"] <= 1e-4 and r["round_trip_bitwise"] and r["generate_equal"] for r in rows)
    console.print(f"results: {out / 'parity.json'}  [{'bold green' if ok else 'bold red'}]{'all checks passed' if ok else 'CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
