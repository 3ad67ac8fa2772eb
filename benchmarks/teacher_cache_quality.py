"""Quality at equal tokens on the real teacher: students trained from a sampled cache vs online full KD vs a top-k
cache of the same bytes (and CE for reference), one short run each, same init, data, seed and steps.

Teacher: a nemo-subnet checkpoint (default the imported SmolLM2-135M) with its prepared data. Student: the
teacher's uniform sub-network at ``--budget`` of its parameters, extracted (`nemo-subnet extract`, first-k).
Every stage goes through the CLI as a user runs it; the caches cover exactly the runs' samples
(``teacher-cache --for-run``). Rows: ce, online_kd (forward KL, T = 1), cache_k12 (sampled, K = 12 = 24 bytes per
token at this vocabulary) and topk6_tail (top-6 with the tail bin: the same 24 bytes). Reported per row: test
and valid perplexity at the end, wall and CPU seconds of training (and of each cache build, paid once).

Writes benchmarks/results/teacher_cache_quality.{csv,md}. One seed and few tokens: a smoke comparison, not the
study (the lead's study runs the full comparison with seeds). Run:
    python benchmarks/teacher_cache_quality.py [--steps 12 --seq 256 --mbs 4 --gbs 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

import harness

RESULTS = Path(__file__).parent / "results"
CLI = [sys.executable, "-m", "nemo_subnet.cli"]


def _run(argv: list[str], log: Path) -> tuple[float, float]:
    """Run a CLI command; (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(CLI + argv, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:2])} failed (rc {proc.returncode}); see {log}")
    return time.perf_counter() - start, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=Path("/work/assets/smollm2_ckpt"))
    parser.add_argument("--data", type=Path, default=Path("/work/assets/smollm2_data"))
    parser.add_argument("--budget", type=float, default=0.34)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--mbs", type=int, default=4)
    parser.add_argument("--gbs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-iters", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("teacher_cache_quality"))
    args = parser.parse_args()

    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.plan.models import uniform_subnet
    from nemo_subnet.models.counting import count_parameters

    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    teacher_cfg = read_model_config(args.teacher)
    student = uniform_subnet(teacher_cfg, args.budget * count_parameters(teacher_cfg))
    heads_per_group = student.num_attention_heads // student.num_query_groups
    subnet = {"hidden": student.hidden_size, "layers": student.num_layers,
              "layer": {"query_groups": student.num_query_groups, "heads_per_group": heads_per_group,
                        "ffn": student.ffn_hidden_size}}
    (work / "subnet.yaml").write_text(yaml.safe_dump(subnet))
    student_dir = work / "student"
    if not student_dir.exists():
        _run(["extract", "--ckpt", str(args.teacher), "--subnet", str(work / "subnet.yaml"), "--out", str(student_dir)],
             work / "extract.log")

    def run_yaml(name: str, distill: dict) -> Path:
        config = {"run_dir": str(work / "runs" / name), "init": {"from_checkpoint": str(student_dir)},
                  "data": {"path": str(args.data), "seq_length": args.seq, "micro_batch_size": args.mbs,
                           "global_batch_size": args.gbs},
                  "optimizer": {"lr": args.lr, "min_lr": args.lr / 10},
                  "schedule": {"train_steps": args.steps, "warmup_steps": max(1, args.steps // 10)},
                  "distill": distill, "checkpoint": {"every_steps": 0, "save_final": False},
                  "logging": {"eval_iters": args.eval_iters, "test_iters": args.eval_iters, "eval_at_start": True,
                              "progress": False, "tensorboard": False}}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    kd = {"teacher": str(args.teacher), "alpha_ce": 0.0, "beta_kd": 1.0, "temperature": 1.0}
    caches = {"cache_k12": ("sample", 12), "topk6_tail": ("topk", 6)}
    rows = []
    for name, (method, k) in caches.items():
        out = work / "caches" / name
        wall, cpu = _run(["teacher-cache", "--for-run", str(run_yaml("online_kd", kd)), f"out={out}", f"k={k}",
                          f"method={method}", "progress=false"], work / f"build_{name}.log")
        rows.append({"row": f"build {name}", "wall_s": wall, "cpu_s": cpu})
    plans = {"ce": {}, "online_kd": kd,
             **{name: {**kd, "teacher_source": "cache", "cache": str(work / "caches" / name)} for name in caches}}
    for name, distill in plans.items():
        wall, cpu = _run(["train", "--config", str(run_yaml(name, distill))], work / f"train_{name}.log")
        records = [json.loads(line) for line in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        last = {r["kind"]: r for r in records}
        first_valid = next(r for r in records if r["kind"] == "valid")
        rows.append({"row": name, "wall_s": wall, "cpu_s": cpu, "tokens": last["train"]["tokens"],
                     "start_valid_ppl": first_valid["valid_ppl"], "valid_ppl": last["valid"]["valid_ppl"],
                     "test_ppl": last["test"]["test_ppl"]})
    report(args, student, rows)


def report(args, student, rows: list[dict]) -> None:
    from nemo_subnet.files import write_text_atomic
    from nemo_subnet.models.counting import count_parameters

    commit = harness.git_commit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "teacher_cache_quality.csv", "\n".join([
        "commit,row,tokens,start_valid_ppl,valid_ppl,test_ppl,wall_s,cpu_s",
        *[f"{commit},{r['row']},{r.get('tokens', '')},{r.get('start_valid_ppl', '')},{r.get('valid_ppl', '')},"
          f"{r.get('test_ppl', '')},{r['wall_s']:.1f},{r['cpu_s']:.1f}" for r in rows]]) + "\n")
    fmt = lambda v: "" if v == "" else f"{v:.2f}"  # noqa: E731
    harness.write_markdown(RESULTS / "teacher_cache_quality.md", [
        f"# Teacher cache quality at equal tokens ({commit})", "",
        f"Teacher {args.teacher}, student its uniform sub-network at {args.budget:g} "
        f"({count_parameters(student) / 1e6:.1f}M: hidden {student.hidden_size}, {student.num_layers} layers), "
        f"{args.steps} steps x {args.gbs} x {args.seq} tokens, lr {args.lr:g}, one seed, valid / test "
        f"ppl over {args.eval_iters} micro-batches of {args.mbs}; a shared 2-core CPU (wall time mostly measures "
        "the other jobs).", "",
        "| row | tokens | valid ppl at start | valid ppl | test ppl | wall s | CPU s |", "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {r['row']} | {r.get('tokens', '')} | {fmt(r.get('start_valid_ppl', ''))} | {fmt(r.get('valid_ppl', ''))} | "
          f"{fmt(r.get('test_ppl', ''))} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |" for r in rows]])


if __name__ == "__main__":
    main()
