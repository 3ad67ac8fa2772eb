"""Sub-network search benchmark: random vs evolutionary vs importance proxy vs fixed first-k / importance picks.

Stages (each cached in --work, so a rerun skips what exists):

1. data: the embedded stdlib corpus, a sentencepiece tokenizer (``nemo_subnet.data.prepare_dataset``);
2. teacher: a small Llama-style model pretrained from scratch with the training loop (``nemo-subnet train``);
3. importance: activation scores on train-split calibration batches (``compute_importance``);
4. search: random, evolutionary and proxy strategies with the same number of evaluations, same space,
   budget and validation batches (``run_search``); baselines: one width-only uniform shrink at the budget
   (every layer and head kept, hidden and FFN scaled by the same factor), selected first-k and
   importance-ordered;
5. test: every method's best sub-network re-evaluated on held-out batches the search never saw.

Writes ``search.csv`` (one row per method and seed), ``search_progress.png`` (best so far vs
evaluations), ``search.md`` (the table) into --out. Default run: ~15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

TEACHER = dict(family="llama", vocab_size=1024, hidden_size=128, num_layers=6, num_attention_heads=8, num_query_groups=4,
               ffn_hidden_size=384, kv_channels=16, max_position_embeddings=256, normalization="RMSNorm", norm_eps=1e-5,
               activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/nemo_subnet_bench_search"), help="cache of data / teacher / runs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--corpus-bytes", type=int, default=2_000_000)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--budget", type=float, default=0.5, help="fraction of the teacher's parameters")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--granularity", default="fine_layerwise")
    p.add_argument("--evaluations", type=int, default=60, help="evaluations per strategy")
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--val-batches", type=int, default=6, help="validation micro-batches per candidate")
    p.add_argument("--test-batches", type=int, default=12, help="held-out micro-batches for the final test")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    return p.parse_args(argv)


def env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def stage_data(args) -> Path:
    from nemo_subnet.data import PrepareConfig, prepare_dataset

    out = args.work / "data"
    if not (out / "dataset.json").is_file():
        prepare_dataset(PrepareConfig(inputs=["stdlib"], out=out, train_tokenizer="sentencepiece",
                                      vocab_size=TEACHER["vocab_size"], max_bytes=args.corpus_bytes, valid_fraction=0.1,
                                      progress=False, overwrite=True))
    return out


def stage_teacher(args, data: Path) -> Path:
    run_dir = args.work / "teacher"
    final = run_dir / "checkpoints" / f"step_{args.teacher_steps:07d}"
    if final.is_dir():
        return final
    (args.work / "teacher.yaml").write_text(yaml.safe_dump(TEACHER))
    config = {"run_dir": str(run_dir), "init": {"random": str(args.work / "teacher.yaml")},
              "data": {"path": str(data), "seq_length": args.seq_length, "micro_batch_size": 8, "global_batch_size": 16},
              "optimizer": {"lr": 3e-3, "min_lr": 3e-4}, "schedule": {"train_steps": args.teacher_steps, "warmup_steps": 20},
              "checkpoint": {"every_steps": 100, "keep_last": 1},
              "logging": {"eval_every": 100, "eval_iters": 4, "progress": False, "tensorboard": False}}
    (args.work / "train.yaml").write_text(yaml.safe_dump(config))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "nemo_subnet.cli", "train", "--config", str(args.work / "train.yaml"),
                    *(["--resume"] if run_dir.exists() else [])], check=True, env=env(), cwd=ROOT)
    print(f"teacher: {args.teacher_steps} steps in {time.time() - t0:.0f}s")
    return final


def stage_importance(args, ckpt: Path, data: Path) -> Path:
    out = args.work / "scores.safetensors"
    if not out.is_file():
        from nemo_subnet.importance import ImportanceConfig, compute_importance
        from nemo_subnet.importance.evaluation import load_batches, load_supernet

        cfg, model = load_supernet(ckpt)
        calib = load_batches(data, cfg, split="train", num_batches=8, seq_length=args.seq_length,
                             micro_batch_size=args.micro_batch_size)
        compute_importance(model, cfg, calib, ImportanceConfig()).save(out)  # cosine layers: what the search reads
    return out


def uniform_shrink(cfg, lower: int, upper: int):
    """Largest width-only uniform shrink (all layers and heads, hidden and FFN scaled alike) inside the budget."""
    from nemo_subnet.subnet.config import SubnetConfig
    from nemo_subnet.subnet.params import subnet_parameters

    best = None
    for step in range(1, 257):
        f = step / 256
        sizes = SubnetConfig(hidden=max(8, round(f * cfg.hidden_size / 8) * 8), layer={"ffn": max(8, round(f * cfg.ffn_hidden_size / 8) * 8)})
        if subnet_parameters(cfg, sizes) <= upper:
            best = sizes
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    data = stage_data(args)
    ckpt = stage_teacher(args, data)

    from nemo_subnet.importance import importance_ordered
    from nemo_subnet.importance.evaluation import evaluate_loss, load_batches, load_supernet, perplexity
    from nemo_subnet.runtime import init_runtime
    from nemo_subnet.search import Budget, EvalConfig, SearchConfig, SearchSpace, StrategyConfig, run_search
    from nemo_subnet.search.space import check_budget, resolve_space
    from nemo_subnet.models.counting import count_parameters
    from nemo_subnet.subnet.params import subnet_parameters

    init_runtime(tp=1, pp=1)
    scores_path = stage_importance(args, ckpt, data)
    from nemo_subnet.importance import ImportanceScores

    scores = ImportanceScores.load(scores_path)
    cfg, model = load_supernet(ckpt)
    test = load_batches(data, cfg, split="valid", num_batches=args.test_batches, seq_length=args.seq_length,
                        micro_batch_size=args.micro_batch_size, skip_batches=args.val_batches)

    def test_ppl(subnet) -> float:
        model.set_subnet(subnet)
        try:
            return perplexity(evaluate_loss(model, cfg, test))
        finally:
            model.reset_subnet()

    space = SearchSpace(granularity=args.granularity, ordering="importance", round_to=8)
    budget = Budget(args.budget, args.tolerance)
    lower, upper = check_budget(resolve_space(space, cfg), budget)
    teacher_test = perplexity(evaluate_loss(model, cfg, test))
    rows, curves = [], {}
    for seed in args.seeds:
        for strategy in ("random", "evolutionary", "proxy"):
            run = args.work / "runs" / f"{strategy}_s{seed}"
            t0 = time.time()
            result = run_search(SearchConfig(
                ckpt=ckpt, data=data, out=run, space=space, budget=budget, strategy=strategy,
                evaluations=args.evaluations, seed=seed, scores=scores_path,
                strategy_config=StrategyConfig(population=args.population),
                eval=EvalConfig(batches=args.val_batches, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size),
                progress=True))
            values = [r["objective"] for r in result.records]
            curves[(strategy, seed)] = [min(values[: i + 1]) for i in range(len(values))]
            rows.append({"method": strategy, "seed": seed, "evaluations": len(values), "best_val_ppl": min(values),
                         "first_val_ppl": values[0], "params": result.best_params,
                         "test_ppl": test_ppl(result.best), "seconds": round(time.time() - t0, 1)})
        for strategy_row in rows[-3:]:
            print(strategy_row)
    sizes = uniform_shrink(cfg, lower, upper)
    search_val = load_batches(data, cfg, split="valid", num_batches=args.val_batches, seq_length=args.seq_length,
                              micro_batch_size=args.micro_batch_size)
    for name, subnet in (("first_k", sizes), ("importance_ordered", importance_ordered(cfg, sizes, scores))):
        model.set_subnet(subnet)
        val = perplexity(evaluate_loss(model, cfg, search_val))
        model.reset_subnet()
        rows.append({"method": name, "seed": "-", "evaluations": 1, "best_val_ppl": val, "first_val_ppl": val,
                     "params": subnet_parameters(cfg, subnet), "test_ppl": test_ppl(subnet), "seconds": 0})
    report(args, rows, curves, cfg, count_parameters(cfg), teacher_test, (lower, upper), sizes)
    return 0


def evals_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), None)


def report(args, rows, curves, cfg, total, teacher_test, bounds, sizes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness import git_commit

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    speedups = []
    for seed in args.seeds:
        random_best = curves[("random", seed)][-1]
        k = evals_to_reach(curves[("evolutionary", seed)], random_best)
        speedups.append((seed, random_best, k, len(curves[("random", seed)]) / k if k else None))
    with open(args.out / "search.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["date", "commit", "device", "granularity", "budget", *rows[0].keys()])
        writer.writeheader()
        for row in rows:
            writer.writerow({"date": stamp, "commit": git_commit(), "device": "cpu", "granularity": args.granularity,
                             "budget": args.budget, **row})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (strategy, seed), curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=f"{strategy} (seed {seed})", color={"random": "C0", "evolutionary": "C3", "proxy": "C2"}[strategy])
    for row in rows:
        if row["method"] in ("first_k", "importance_ordered"):
            ax.axhline(row["best_val_ppl"], ls="--", color="C7" if row["method"] == "first_k" else "C1", label=row["method"])
    ax.set(xlabel="evaluations", ylabel="best validation perplexity so far", yscale="log",
           title=f"search at {args.budget:.0%} of {total:,} params ({args.granularity})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "search_progress.png", dpi=120)
    plt.close(fig)
    lines = [f"# Sub-network search benchmark ({stamp}, commit {git_commit()}, CPU)", "",
             f"Teacher: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads / "
             f"{cfg.num_query_groups} groups, FFN {cfg.ffn_hidden_size}, vocab {cfg.vocab_size}: {total:,} parameters, "
             f"pretrained {args.teacher_steps} steps on the stdlib corpus; test perplexity {teacher_test:.2f}.",
             f"Budget {args.budget:.0%} +- {args.tolerance:.0%} = {bounds[0]:,}..{bounds[1]:,} parameters; space "
             f"`{args.granularity}`, importance-ordered units; {args.val_batches} x {args.micro_batch_size} x "
             f"{args.seq_length} validation tokens per candidate; test = {args.test_batches} other held-out batches.",
             f"Baselines: hidden {sizes.hidden}, FFN {sizes.layer.ffn}, all layers and heads.", "",
             "| method | seed | evaluations | best val ppl | test ppl of best | params | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['evaluations']} | {r['best_val_ppl']:.2f} | {r['test_ppl']:.2f} | "
                     f"{r['params']:,} | {r['seconds']} |")
    lines += ["", "Evolutionary vs random (evaluations evolutionary needs to reach random's best):", ""]
    for seed, best, k, ratio in speedups:
        lines.append(f"- seed {seed}: random's best {best:.2f} after {args.evaluations} evaluations; evolutionary reaches it "
                     f"after {k if k else 'never'}" + (f" -> {ratio:.1f}x fewer" if ratio else ""))
    (args.out / "search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    (args.out / "search_curves.json").write_text(json.dumps({f"{s}_s{seed}": c for (s, seed), c in curves.items()}))


if __name__ == "__main__":
    sys.exit(main())
