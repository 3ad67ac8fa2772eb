"""Does the search objective predict the trained student? Spearman of objective (every fidelity) vs ppl after KD.

On the real teacher (SmolLM2-135M): ``--candidates`` sub-networks at one budget, picked evenly by rank from the
candidates of bench_search_cost.py's ``fidelity`` section (their objective on the search split at every prefix
of the validation batches, so at every rung of any schedule, is already measured there); each is extracted
(``extract_checkpoint``) and trained briefly with KD from the teacher (``nemo-subnet train``, forward KL, the
data's train split), then measured on the valid split (which the objective never saw). Writes
``objective_vs_trained.{csv,md,png}``. Each KD run is ``--steps`` x ``--batch`` x ``--seq-length`` tokens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from bench_search_cost import spearman, write_csv  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, default=Path("/work/assets/smollm2_ckpt"))
    p.add_argument("--train-data", type=Path, default=Path("/work/assets/smollm2_data"))
    p.add_argument("--cost-work", type=Path, default=Path("/tmp/nemo_subnet_bench_search_cost"),
                   help="bench_search_cost.py's --work (its fidelity.json and scores)")
    p.add_argument("--work", type=Path, default=Path("/tmp/nemo_subnet_bench_objective_vs_trained"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--budget", type=float, default=0.33, help="as bench_search_cost.py's run")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4, help="sequences per step")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-iters", type=int, default=4)
    return p.parse_args(argv)


def candidate_subnets(args, n: int) -> list:
    """The fidelity section's candidates, regenerated: its random strategy's asks do not depend on values."""
    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.importance.scores import ImportanceScores
    from nemo_subnet.search import Budget, SearchSpace, check_budget, make_strategy, resolve_space

    cfg = read_model_config(args.ckpt)
    rspace = resolve_space(SearchSpace(granularity="fine_uniform", ordering="importance", round_to=8), cfg)
    strategy = make_strategy("random", rspace, check_budget(rspace, Budget(args.budget, 0.05)), 1)
    scores = ImportanceScores.load(args.cost_work / "scores.safetensors")
    out = []
    for _ in range(n):
        genome = strategy.ask()
        out.append((rspace.params(genome), rspace.subnet(genome, scores)))
    return out


def train_one(args, index: int, subnet) -> float:
    from nemo_subnet.subnet.extract import extract_checkpoint

    work = args.work / f"candidate{index}"
    result = work / "result.json"
    if result.is_file():
        return json.loads(result.read_text())["valid_ppl"]
    if not (work / "model").is_dir():
        extract_checkpoint(args.ckpt, subnet, work / "model")
    run = {"run_dir": str(work / "run"), "init": {"from_checkpoint": str(work / "model")}, "seed": 1234,
           "data": {"path": str(args.train_data), "seq_length": args.seq_length, "micro_batch_size": args.batch,
                    "global_batch_size": args.batch},
           "optimizer": {"lr": args.lr, "min_lr": args.lr / 10},
           "schedule": {"train_steps": args.steps, "warmup_steps": max(1, args.steps // 6)},
           "distill": {"teacher": str(args.ckpt), "alpha_ce": 0.0, "beta_kd": 1.0},
           "checkpoint": {"every_steps": 0, "save_final": False},
           "logging": {"eval_every": args.steps, "eval_iters": args.eval_iters, "progress": False,
                       "tensorboard": False}}
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(run))
    shutil.rmtree(work / "run", ignore_errors=True)  # a run cut short before its result starts over
    proc = subprocess.run([sys.executable, "-m", "nemo_subnet.cli", "train", "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training candidate {index} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    ppl = [r for r in rows if r.get("kind") == "valid"][-1]["valid_ppl"]
    result.write_text(json.dumps({"valid_ppl": ppl}))
    return ppl


def main(argv=None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from harness import git_commit, write_markdown

    from nemo_subnet.runtime import init_runtime

    init_runtime(tp=1, pp=1, seed=0)
    fidelity = json.loads((args.cost_work / "fidelity.json").read_text())
    subnets = candidate_subnets(args, len(fidelity))
    full = [json.loads(r["prefix_ppl"])[-1] for r in fidelity]
    order = sorted(range(len(full)), key=lambda i: full[i])
    picked = [order[round(k * (len(order) - 1) / (args.candidates - 1))] for k in range(args.candidates)]
    rows = []
    for i in picked:
        assert subnets[i][0] == fidelity[i]["params"], "candidates regenerated differently from the fidelity section"
        trained = train_one(args, i, subnets[i][1])
        rows.append({"candidate": i, "params": fidelity[i]["params"], "prefix_ppl": fidelity[i]["prefix_ppl"],
                     "trained_valid_ppl": trained})
        print(json.dumps(rows[-1]), flush=True)
    trained = [r["trained_valid_ppl"] for r in rows]
    prefixes = [json.loads(r["prefix_ppl"]) for r in rows]
    rho = [spearman([p[k] for p in prefixes], trained) for k in range(len(prefixes[0]))]
    tokens = args.steps * args.batch * args.seq_length
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "objective_vs_trained.csv", rows)
    md = [f"# Search objective vs the trained student (SmolLM2-135M teacher, CPU, commit {git_commit()})", "",
          f"{len(rows)} candidates at budget {args.budget} (evenly by objective rank of bench_search_cost.py's 24), "
          f"each extracted and trained with KD (forward KL) for {args.steps} steps = {tokens:,} tokens, lr {args.lr}; "
          f"valid perplexity over {args.eval_iters} micro-batches of {args.batch} x {args.seq_length}.", "",
          "| objective fidelity (search-split batches of 4 x 128) | Spearman vs trained valid ppl |", "|---|---|"]
    md += [f"| {k + 1} batch(es) ({(k + 1) * 512} tokens) | {r:.3f} |" for k, r in enumerate(rho)]
    md += ["", "| candidate | parameters | objective (full) | trained valid ppl |", "|---|---|---|---|"]
    md += [f"| {r['candidate']} | {r['params']:,} | {p[-1]:.1f} | {r['trained_valid_ppl']:.2f} |"
           for r, p in zip(rows, prefixes)]
    write_markdown(args.out / "objective_vs_trained.md", md)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[-1] for p in prefixes], trained)
    ax.set(xscale="log", xlabel="search objective (untrained sub-network ppl, full fidelity)",
           ylabel=f"valid ppl after {tokens:,} KD tokens", title=f"Spearman {rho[-1]:.2f} (lowest rung: {rho[0]:.2f})")
    fig.tight_layout()
    fig.savefig(args.out / "objective_vs_trained.png", dpi=120)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
