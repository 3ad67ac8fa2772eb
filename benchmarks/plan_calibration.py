"""`nemo-subnet plan` against measured peak memory of real KD steps on CPU (target: within 15% on every row).

    python benchmarks/plan_calibration.py [--rows all|quick|NAME,...] [--models pythia|tiny] [--work DIR]

Teacher and student are built from transformers configs (GPTNeoXConfig with Pythia-160M's shape for the
teacher, Pythia-70M's for the student; ``--models tiny`` shrinks both for a seconds-long smoke run), the
teacher saved as a nemo-subnet checkpoint, the student randomly initialised. Each row is a real
``nemo-subnet train`` run (2 steps: the second has the Adam state resident) in a fresh process under
``kd_memory_probe.py`` (torch.profiler, every allocation of the CPU allocator); the planner is asked the same
question with the CPU implementation (fp32, the torch mirrors of the KD kernels, torch's foreach AdamW).
Nothing is fitted per row: the planner's formulas are the same for every row and for GPUs.

Writes benchmarks/results/plan_calibration.csv and .md (rows appended as they finish, then the table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nemo_subnet.files import write_csv_atomic

import harness  # benchmarks/ is on sys.path when this runs as a script or is imported by bench_kd_memory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PROBE = HERE / "kd_memory_probe.py"
MIB = 2**20

# name: (seq, micro_batch, micro_batches, extra options); sized for <= 25 min on 2 contended cores
ROWS = {
    "s512_b1_m1": (512, 1, 1, {}),
    "s512_b1_m2": (512, 1, 2, {}),
    "s512_b1_m8": (512, 1, 8, {}),
    "s512_b4_m1": (512, 4, 1, {}),
    "s1024_b1_m1": (1024, 1, 1, {}),
    "s1024_b2_m2": (1024, 2, 2, {}),
    "s2048_b1_m1": (2048, 1, 1, {}),
    "s2048_b2_m1": (2048, 2, 1, {}),
    "s1024_b2_m1_selective": (1024, 2, 1, {"recompute": "selective"}),
    "s2048_b1_m1_full": (2048, 1, 1, {"recompute": "full"}),
    "s1024_b1_m1_ce": (1024, 1, 1, {"alpha_ce": 0.5}),
    "s1024_b1_m1_topk": (1024, 1, 1, {"top_k": 64}),
    "s2048_b1_m1_fused": (2048, 1, 1, {"fused_output": True}),
    "s2048_b2_m1_fused": (2048, 2, 1, {"fused_output": True}),
}
# the default table (~15 min of steps here); the rest are kept for longer runs (--rows NAME,...)
DEFAULT = [n for n in ROWS if n not in ("s512_b1_m2", "s1024_b2_m2", "s2048_b2_m1_fused")]
QUICK = ["s512_b1_m1", "s512_b1_m2", "s1024_b1_m1_ce", "s1024_b2_m1_selective"]
MODELS = {
    "pythia": ("pythia-160m", "pythia-70m", {}),
    "tiny": ("pythia-160m", "pythia-70m", dict(hidden_size=128, num_layers=2, num_attention_heads=4,
                                               num_query_groups=4, kv_channels=32, ffn_hidden_size=512)),
    # development checks of the activation counts: a small vocabulary, so activations dominate
    "acts": ("pythia-160m", "pythia-70m", dict(vocab_size=500, num_layers=4)),
    "llama_acts": ("llama-3.2-1b", "llama-3.2-1b", dict(vocab_size=500, hidden_size=512, num_layers=4,
                                                        num_attention_heads=8, num_query_groups=2, kv_channels=64,
                                                        ffn_hidden_size=1536, max_position_embeddings=4096)),
}


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1), "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def model_configs(kind: str):
    import dataclasses

    from nemo_subnet.plan.models import preset_config

    teacher_name, student_name, shrink = MODELS[kind]
    teacher, student = preset_config(teacher_name), preset_config(student_name)
    if shrink:
        teacher = dataclasses.replace(teacher, **{k: 2 * v if k in ("hidden_size", "ffn_hidden_size", "num_attention_heads",
                                                                    "num_query_groups") else v
                                                  for k, v in shrink.items() if k != "num_layers" or v < teacher.num_layers})
        student = dataclasses.replace(student, **shrink)
    return teacher, student


MAKE_CHECKPOINT = """
import sys
from pathlib import Path
from nemo_subnet.checkpointing import atomic_directory, save_model
from nemo_subnet.models import ModelConfig, build_gpt_model
from nemo_subnet.runtime import init_runtime, shutdown_runtime
init_runtime(tp=1, pp=1, seed=11)
cfg = ModelConfig.load(sys.argv[1])
model = build_gpt_model(cfg)
with atomic_directory(Path(sys.argv[2])) as tmp:
    save_model(model, cfg, tmp)
shutdown_runtime()
"""


def prepare_data(work: Path) -> Path:
    """A small stdlib corpus (500-token tokenizer: the models' 50304 rows are a superset)."""
    data = work / "data"
    if not data.exists():
        from nemo_subnet.data import PrepareConfig, prepare_dataset

        prepare_dataset(PrepareConfig(inputs=["stdlib"], out=data, train_tokenizer="sentencepiece", vocab_size=500,
                                      max_bytes=1_500_000, valid_fraction=0.05, progress=False))
    return data


def prepare(work: Path, kind: str) -> tuple[Path, Path, Path]:
    """(data dir, teacher checkpoint, student model.yaml) under ``work``, made once."""
    teacher, student = model_configs(kind)
    data = prepare_data(work)
    student_yaml = work / f"student_{kind}.yaml"
    student.save(student_yaml)
    teacher_ckpt = work / f"teacher_{kind}"
    if not teacher_ckpt.exists():
        teacher.save(work / f"teacher_{kind}.yaml")
        subprocess.run([sys.executable, "-c", MAKE_CHECKPOINT, str(work / f"teacher_{kind}.yaml"), str(teacher_ckpt)],
                       check=True, env=env(), cwd=ROOT)
    return data, teacher_ckpt, student_yaml


def run_config(work: Path, name: str, data: Path, teacher: Path | None, student_yaml: Path, seq: int, mb: int, nmb: int,
               extra: dict) -> dict:
    distill = {"teacher": None if teacher is None else str(teacher), "alpha_ce": extra.get("alpha_ce", 0.0),
               "beta_kd": 1.0, "top_k": extra.get("top_k")}
    distill["fused_output"] = "on" if extra.get("fused_output") else "off"
    parallel = {"precision": "fp32"}
    if extra.get("recompute"):
        parallel["recompute"] = extra["recompute"]
    return {
        "run_dir": str(work / "runs" / name), "init": {"random": str(student_yaml)},
        "data": {"path": str(data), "seq_length": seq, "micro_batch_size": mb, "global_batch_size": mb * nmb},
        "optimizer": {"lr": 1e-4, "min_lr": 1e-5},
        "schedule": {"train_steps": 2},
        "distill": distill,
        "checkpoint": {"save_final": False},
        "logging": {"eval_iters": 1, "progress": False, "tensorboard": False},
        "parallel": parallel,
    }


def measure(work: Path, name: str, config: dict, source: Path | None = None, mode: str = "profiler") -> dict:
    """Run the probe in a fresh process; its JSON result."""
    import shutil

    shutil.rmtree(config["run_dir"], ignore_errors=True)
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = work / f"{name}.{mode}.json"
    cmd = [sys.executable, str(PROBE), "--config", str(cfg_path), "--out", str(out), "--mode", mode]
    if source is not None:
        cmd += ["--source", str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"probe failed for {name} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def plan_row(teacher_cfg, student_cfg, seq: int, mb: int, nmb: int, extra: dict):
    from nemo_subnet.plan.memory import PlanOptions, plan_memory

    opts = PlanOptions(seq_length=seq, micro_batch_size=mb, global_batch_size=mb * nmb, precision="fp32",
                       backend="cpu", adam="foreach", recompute=extra.get("recompute", "none"),
                       alpha_ce=extra.get("alpha_ce", 0.0), top_k=extra.get("top_k"),
                       fused_output=bool(extra.get("fused_output")))
    return plan_memory(student_cfg, teacher_cfg, opts)


FIELDS = ["date", "commit", "models", "row", "seq", "micro_batch", "micro_batches", "options", "plan_mib",
          "measured_mib", "error_pct", "plan_phase", "window_start_mib", "plan_static_mib", "wall_s", "ops_at_peak"]


def write_outputs(rows: list[dict], csv_path: Path, md_path: Path, note: str) -> None:
    write_csv_atomic(csv_path, FIELDS, rows)
    lines = [f"# plan vs measured peak memory (CPU, {rows[0]['date'] if rows else ''}, commit {rows[0]['commit'] if rows else ''})",
             "", note, "",
             "| row | seq | micro-batch | micro-batches | options | plan MiB | measured MiB | error | plan's peak phase |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['seq']} | {r['micro_batch']} | {r['micro_batches']} | {r['options'] or '-'} | "
                     f"{r['plan_mib']:.0f} | {r['measured_mib']:.0f} | {r['error_pct']:+.2f}% | {r['plan_phase']} |")
    worst = max((abs(r["error_pct"]) for r in rows), default=0.0)
    lines += ["", f"Largest |error|: {worst:.2f}% (target: 15%)."]
    harness.write_markdown(md_path, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="default", help="default, all, quick, or comma-separated row names")
    parser.add_argument("--models", choices=sorted(MODELS), default="pythia")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "plan_calibration")
    parser.add_argument("--out", default="plan_calibration", help="result file stem under benchmarks/results/")
    args = parser.parse_args()
    names = {"all": list(ROWS), "default": DEFAULT, "quick": QUICK}.get(args.rows) or args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    sys.path.insert(0, str(ROOT))
    from nemo_subnet.plan.memory import plan_memory  # noqa: F401  (fail before any run on an import error)

    args.work.mkdir(parents=True, exist_ok=True)
    teacher_cfg, student_cfg = model_configs(args.models)
    data, teacher_ckpt, student_yaml = prepare(args.work, args.models)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    date = datetime.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    csv_path, md_path = RESULTS / f"{args.out}.csv", RESULTS / f"{args.out}.md"
    rows = []
    for name in names:
        seq, mb, nmb, extra = ROWS[name]
        started = time.perf_counter()
        result = measure(args.work, name, run_config(args.work, name, data, teacher_ckpt, student_yaml, seq, mb, nmb, extra))
        plan = plan_row(teacher_cfg, student_cfg, seq, mb, nmb, extra)
        static = sum(v for k, v in plan.parts.items() if k in ("student weights", "student grads", "teacher weights"))
        row = {"date": date, "commit": commit, "models": args.models, "row": name, "seq": seq, "micro_batch": mb,
               "micro_batches": nmb, "options": " ".join(f"{k}={v}" for k, v in extra.items()),
               "plan_mib": plan.total / MIB, "measured_mib": result["peak_bytes"] / MIB,
               "error_pct": 100 * (plan.total - result["peak_bytes"]) / result["peak_bytes"], "plan_phase": plan.phase,
               "window_start_mib": result["window_start_bytes"] / MIB, "plan_static_mib": static / MIB,
               "wall_s": round(time.perf_counter() - started, 1), "ops_at_peak": " > ".join(result["ops_at_peak"][-4:])}
        rows.append(row)
        print(f"{name}: plan {row['plan_mib']:.0f} MiB ({plan.phase}), measured {row['measured_mib']:.0f} MiB, "
              f"error {row['error_pct']:+.1f}%; window start {row['window_start_mib']:.0f} vs static "
              f"{row['plan_static_mib']:.0f} MiB; peak in {row['ops_at_peak']} [{row['wall_s']} s]", flush=True)
        note = (f"Teacher {MODELS[args.models][0]}-shaped, student {MODELS[args.models][1]}-shaped (GPTNeoXConfig), fp32, "
                "2 training steps per row in a fresh process, torch.profiler peak of live tensor bytes over the steps; "
                "plan = `plan_memory` with backend=cpu, adam=foreach (the CPU implementations).")
        write_outputs(rows, csv_path, md_path, note)


if __name__ == "__main__":
    main()
