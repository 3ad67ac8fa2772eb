"""Section `search`: the search objective of the setup's teacher in the teacher's dtype (bf16 on GPU: its
model.yaml records it), through ``nemo-subnet search`` (random strategy, first-k ordering, budget 50 % +- 10 %,
candidates at their own size, one fidelity).

Reports candidates per second (the first evaluation, which compiles kernels, left out) and the evaluation's
throughput. Checks: every candidate was evaluated and lies in the budget band with a finite perplexity > 1;
the super-network the search loads holds the checkpoint's dtype (bf16 on GPU: fp32 would mean no TF32 and no
flash attention, ~10x slower); the full config of the masked super-network gives the unmasked model's
perplexity on the same batches (invariant 2's "full config == unmasked model"; the tolerance covers bf16
on GPU); re-evaluating the best candidate reproduces its recorded objective, and the masked super-network
gives it too. Target (reported): the evaluation's model FLOPs utilisation.
"""

from __future__ import annotations

import json
import math
import statistics

from .common import progress
from .profiles import PROFILES

BUDGET, TOLERANCE = 0.5, 0.1


def _search_cli(ctx, p: dict, out) -> None:
    from nemo_subnet.cli import main as cli

    space = ctx.work / "search" / "space.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(f"granularity: fine_uniform\nordering: first_k\nround_to: {p['round_to']}\n")
    code = cli(["search", "--ckpt", ctx.artifacts["setup.teacher"], "--data", ctx.artifacts["setup.data"],
                "--space", str(space), "--out", str(out), "--budget", str(BUDGET), "--tolerance", str(TOLERANCE),
                "--strategy", "random", "--evaluations", str(p["evaluations"]), "--val-batches", str(p["val_batches"]),
                "--seq-length", str(p["seq_length"]), "--micro-batch-size", str(p["micro_batch_size"]),
                "--rungs", "1", "--no-progress", "--no-plots"])
    if code != 0:
        raise RuntimeError(f"nemo-subnet search exited {code}")


def _invariants(ctx, rec, p: dict, best: dict) -> None:
    import torch

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.importance.evaluation import evaluate_loss, load_batches, load_supernet, perplexity
    from nemo_subnet.runtime import init_runtime, shutdown_runtime
    from nemo_subnet.search.objective import SupernetPerplexity
    from nemo_subnet.subnet.config import SubnetConfig

    init_runtime(tp=1, pp=1, seed=0)
    try:
        cfg, supernet = load_supernet(ctx.artifacts["setup.teacher"])
        loaded = supernet.decoder.layers[0].mlp.linear_fc1.weight.dtype
        want = torch.bfloat16 if torch.cuda.is_available() else cfg.torch_dtype
        rec.number("supernet_dtype", str(loaded))
        rec.check("the search's super-network runs in the teacher's dtype", loaded == want == cfg.torch_dtype,
                  f"weights {loaded}, model.yaml {cfg.dtype}, want {want}")
        data = load_batches(ctx.artifacts["setup.data"], cfg, split="valid", num_batches=p["val_batches"],
                            seq_length=p["seq_length"], micro_batch_size=p["micro_batch_size"])
        masked = SupernetPerplexity(supernet, cfg, data, forward="masked")
        full = masked(SubnetConfig())
        again = SupernetPerplexity(supernet, cfg, data)(SubnetConfig.from_dict(best["subnet"]))  # as the search ran it
        again_masked = masked(SubnetConfig.from_dict(best["subnet"]))
        del supernet
        _, plain = load_model(ctx.artifacts["setup.teacher"])
        unmasked = perplexity(evaluate_loss(plain, cfg, data))
    finally:
        shutdown_runtime()
    rtol = 1e-3 if torch.cuda.is_available() and cfg.dtype == "bfloat16" else 1e-5
    rel = abs(full - unmasked) / unmasked
    rec.number("full_config_ppl", full)
    rec.number("unmasked_ppl", unmasked)
    rec.check("full config == unmasked model", rel <= rtol, f"ppl {full:.4f} vs {unmasked:.4f} (rel {rel:.1e}, "
              f"tolerance {rtol:g})")
    rel = abs(again - best["objective"]) / best["objective"]
    rec.check("best candidate re-evaluates to its recorded objective", rel <= 1e-6,
              f"{again:.6f} vs {best['objective']:.6f}")
    rel = abs(again_masked - again) / again
    rec.check("own-size (compact) objective == masked super-network", rel <= rtol,
              f"{again:.6f} vs {again_masked:.6f} (rel {rel:.1e}, tolerance {rtol:g})")


def _throughput_target(ctx, rec, p: dict, tokens_per_s: float) -> None:
    import torch

    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.models.counting import forward_flops_per_token
    from nemo_subnet.training.metrics import peak_flops

    cfg = read_model_config(ctx.artifacts["setup.teacher"])
    peak = peak_flops(ctx.peak_flops, cfg.torch_dtype)
    if peak is None or p["eval_mfu_target"] is None:
        return
    mfu = tokens_per_s * forward_flops_per_token(cfg, p["seq_length"]) / peak
    rec.number("eval_mfu", mfu)
    if torch.cuda.is_available():
        rec.check(f"target: evaluation MFU >= {p['eval_mfu_target']:g}", mfu >= p["eval_mfu_target"], f"{mfu:.3f}",
                  required=False)


def run(ctx, rec) -> None:
    p = PROFILES[ctx.profile].search
    out = ctx.work / "search" / "run"
    progress(rec.section, f"nemo-subnet search: random, {p['evaluations']} evaluations, budget {BUDGET:g}")
    _search_cli(ctx, p, out)
    records = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines() if line.strip()]
    lower, upper = json.loads((out / "search.json").read_text())["bounds"]
    rec.number("candidates", [{k: r[k] for k in ("objective", "params", "eval_seconds")} for r in records])
    warm = [r["eval_seconds"] for r in records[1:]] or [r["eval_seconds"] for r in records]
    if warm:
        seconds = statistics.median(warm)
        tokens = p["val_batches"] * p["micro_batch_size"] * p["seq_length"]
        rec.number("median_eval_seconds", seconds)
        rec.number("candidates_per_s", 1.0 / seconds)
        rec.number("eval_tokens_per_s", tokens / seconds)
        _throughput_target(ctx, rec, p, tokens / seconds)
    rec.check("every candidate evaluated", len(records) == p["evaluations"], f"{len(records)} of {p['evaluations']}")
    rec.check("candidates finite, within the budget",
              bool(records) and all(math.isfinite(r["objective"]) and r["objective"] > 1 and lower <= r["params"] <= upper
                                    for r in records), f"params band {lower:,}..{upper:,}")
    best = min(records, key=lambda r: r["objective"])
    rec.number("best", {"objective": best["objective"], "params": best["params"]})
    progress(rec.section, "masked super-network and own-size invariants")
    _invariants(ctx, rec, p, best)
