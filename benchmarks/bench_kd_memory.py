"""KD-step peak memory against the number of micro-batches (1, 2, 4, 8): now, and before co-pipelining.

    python benchmarks/bench_kd_memory.py [--microbatches 1,2,4,8] [--old-commit ef3a203] [--work DIR]

"after" is this checkout (the teacher runs inside each micro-batch, teacher.py; fused output off so both
sides compute the same logits); "before" is a git worktree of ``--old-commit`` under /tmp (the teacher's
forward over all micro-batches first, its logits cached: ``m x b x s x V`` floats), imported by
``kd_memory_probe.py --source``. Same models (a Pythia-70M-shaped teacher, a 4-layer 256-wide student,
V = 50304), data, seq 512, micro-batch 1, fp32, 2 steps, each run in a fresh process; peak of live tensor
bytes by torch.profiler over the steps. The plan column is ``nemo-subnet plan``'s number for "after".

Writes benchmarks/results/kd_memory_cpu.csv, .md and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
from nemo_subnet.files import atomic_write, write_csv_atomic  # noqa: E402
import plan_calibration as calib  # noqa: E402  (shared setup: data, checkpoints, probe runs)

MIB = 2**20
SEQ, MICRO_BATCH = 512, 1


def models():
    from nemo_subnet.plan.models import preset_config

    teacher = preset_config("pythia-70m")
    student = dataclasses.replace(teacher, hidden_size=256, num_layers=4, num_attention_heads=4, num_query_groups=4,
                                  kv_channels=64, ffn_hidden_size=1024)
    return teacher, student


def prepare(work: Path) -> tuple[Path, Path, Path]:
    teacher, student = models()
    data = _as_model_vocab(calib.prepare_data(work), teacher.vocab_size)
    student_yaml = work / "kdmem_student.yaml"
    student.save(student_yaml)
    teacher_ckpt = work / "kdmem_teacher"
    if not teacher_ckpt.exists():
        teacher.save(work / "kdmem_teacher.yaml")
        subprocess.run([sys.executable, "-c", calib.MAKE_CHECKPOINT, str(work / "kdmem_teacher.yaml"), str(teacher_ckpt)],
                       check=True, env=calib.env(), cwd=ROOT)
    return data, teacher_ckpt, student_yaml


def _as_model_vocab(data: Path, vocab: int) -> Path:
    """The corpus with its metadata's vocab_size set to the models' (ef3a203 required them equal; the token ids,
    all < 500, and their uint16 storage are unchanged, so both versions read the same data)."""
    import json
    import shutil

    out = data.with_name(data.name + f"_v{vocab}")
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(data, tmp)
        meta = json.loads((tmp / "dataset.json").read_text())
        meta["vocab_size"] = vocab
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, out)
    return out


def old_worktree(commit: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"nemo_{commit}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], check=True, cwd=ROOT,
                       capture_output=True)
    return path


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in ("before", "after"):
        pts = [(r["micro_batches"], r["measured_mib"]) for r in rows if r["version"] == label]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{label} ({'cached teacher logits' if label == 'before' else 'teacher per micro-batch'})")
    pts = [(r["micro_batches"], r["plan_mib"]) for r in rows if r["version"] == "after"]
    ax.plot(*zip(*pts), linestyle="--", color="gray", label="plan (after)")
    ax.set_xlabel("micro-batches per step")
    ax.set_ylabel("peak tensor memory (MiB)")
    ax.set_xscale("log", base=2)
    ax.set_title(f"KD step peak memory, CPU, seq {SEQ}, micro-batch {MICRO_BATCH}, V=50304")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--microbatches", default="1,2,4,8")
    parser.add_argument("--old-commit", default="ef3a203")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "plan_calibration")
    args = parser.parse_args()
    counts = [int(x) for x in args.microbatches.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    data, teacher_ckpt, student_yaml = prepare(args.work)
    teacher_cfg, student_cfg = models()
    old = old_worktree(args.old_commit)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    rows = []
    for version, source in (("after", None), ("before", old)):
        for m in counts:
            name = f"kdmem_{version}_m{m}"
            config = calib.run_config(args.work, name, data, teacher_ckpt, student_yaml, SEQ, MICRO_BATCH, m, {})
            if version == "before":
                config["distill"].pop("fused_output")  # not a field at the old commit
            result = calib.measure(args.work, name, config, source=source)
            plan = calib.plan_row(teacher_cfg, student_cfg, SEQ, MICRO_BATCH, m, {})
            rows.append({"date": datetime.date.today().isoformat(), "commit": commit if source is None else args.old_commit,
                         "version": version, "micro_batches": m, "measured_mib": result["peak_bytes"] / MIB,
                         "plan_mib": plan.total / MIB, "wall_s": round(result["wall_s"], 1),
                         "ops_at_peak": " > ".join(result["ops_at_peak"][-3:])})
            print(f"{version} m={m}: {rows[-1]['measured_mib']:.0f} MiB (plan {rows[-1]['plan_mib']:.0f})", flush=True)
    RESULTS.mkdir(exist_ok=True)
    csv_path = RESULTS / "kd_memory_cpu.csv"
    write_csv_atomic(csv_path, list(rows[0]), rows)
    by = {(r["version"], r["micro_batches"]): r for r in rows}
    lines = [f"# KD-step peak memory vs micro-batches (CPU, {rows[0]['date']}, after = {commit}, before = {args.old_commit})",
             "", f"Teacher Pythia-70M-shaped, student 4 x 256, V = 50304, seq {SEQ}, micro-batch {MICRO_BATCH}, fp32, "
             "2 steps, torch.profiler peak of live tensor bytes.", "",
             "| micro-batches | before (cached teacher logits) MiB | after (teacher per micro-batch) MiB | plan (after) MiB |",
             "|---|---|---|---|"]
    for m in counts:
        b, a = by.get(("before", m)), by[("after", m)]
        lines.append(f"| {m} | {b['measured_mib']:.0f} | {a['measured_mib']:.0f} | {a['plan_mib']:.0f} |" if b else
                     f"| {m} | - | {a['measured_mib']:.0f} | {a['plan_mib']:.0f} |")
    after = [by[("after", m)]["measured_mib"] for m in counts]
    lines += ["", f"After: spread over micro-batches {max(after) - min(after):.1f} MiB ({100 * (max(after) - min(after)) / min(after):.2f}%)."]
    harness.write_markdown(RESULTS / "kd_memory_cpu.md", lines)
    plot(rows, RESULTS / "kd_memory_cpu.png")


if __name__ == "__main__":
    main()
