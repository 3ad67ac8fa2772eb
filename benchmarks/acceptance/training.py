"""Section `train_resume`: the KD run through the real CLI, as users launch it, killed and resumed.

An uninterrupted KD run (the reference: no checkpoints, nothing but the steps); the same run SIGKILLed (the
whole process group, as a node failure would) after its first checkpoint and ``--resume``d. Checks: the run
took the fused output path with ``alpha_ce: 0`` (what a first GPU run gets at a 128k vocabulary: its own log
line says which path and why), logged every step, the resumed metrics hold every step once, the LR schedule
exactly, and losses that continue the reference's within the profile's tolerance (bit-exact on CPU fp32;
bf16 on GPU is not bit-reproducible: attention backward and reductions are not deterministic).
The shared helpers (run, kill, read metrics) serve the parallel section too (parallel_runs.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import progress
from .fixtures import run_config, write_yaml
from .profiles import PROFILES

WARMUP_STEPS_SKIPPED = 3  # the first steps include Triton JIT compilation and allocator warmup


def _cli_env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}


def train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nemo_subnet.cli", "train", "--config", str(config), *extra]


def records(run_dir: Path, kind: str = "train") -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def run_logged(cmd: list[str], log: Path, section: str, what: str) -> float:
    """Run to completion, output to ``log``; raise with the log's tail when it fails. Returns seconds."""
    progress(section, f"{what}: {' '.join(cmd[1:])}")
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_cli_env()).returncode
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise RuntimeError(f"{what} exited {code}; last lines of {log}:\n{tail}")
    return time.perf_counter() - started


def _run_and_kill(cmd: list[str], log: Path, run_dir: Path, kill_after: int, section: str, timeout: float = 600):
    """Start a run, SIGKILL its process group once metrics.jsonl has step ``kill_after``. Returns
    (last logged step at the kill, return code)."""
    progress(section, f"killed run: SIGKILL after step {kill_after}")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_cli_env(), start_new_session=True)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                steps = [r["step"] for r in records(run_dir)]
                if steps and max(steps) >= kill_after:
                    break
                if proc.poll() is not None:
                    tail = "\n".join(log.read_text().splitlines()[-25:])
                    raise RuntimeError(f"the run ended (exit {proc.returncode}) before step {kill_after}:\n{tail}")
                time.sleep(0.02)
            else:
                raise RuntimeError(f"step {kill_after} not reached in {timeout:.0f} s")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return max(r["step"] for r in records(run_dir)), proc.returncode


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("_")[1]) for p in folder.iterdir() if p.name.startswith("step_"))


def max_rel_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=math.inf)


def keep_metrics(ctx, run_dir: Path, name: str) -> None:
    """A copy of a run's metrics.jsonl under --out (the run directories themselves stay in the work dir)."""
    src = Path(run_dir) / "metrics.jsonl"
    if src.exists():
        dst = ctx.out / "runs" / f"{name}.metrics.jsonl"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def fused_path_line(log: Path) -> str:
    """What the run said about its output path (``train: fused output ...``), or why there is nothing."""
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("train: fused output"):
            return line.removeprefix("train: ")
    return f"no 'train: fused output' line in {log.name}"


def train_resume(ctx, rec) -> None:
    profile, t = PROFILES[ctx.profile], PROFILES[ctx.profile].train
    root, logs = ctx.work / "train", ctx.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg_ref = write_yaml(root / "reference.yaml", run_config(profile, ctx.artifacts, root / "reference",
                                                             checkpoint_every=0, peak_flops=ctx.peak_flops))
    cfg_kill = write_yaml(root / "killed.yaml", run_config(profile, ctx.artifacts, root / "killed",
                                                           peak_flops=ctx.peak_flops))
    rec.number("run", {k: t[k] for k in ("seq_length", "micro_batch_size", "global_batch_size", "steps",
                                           "checkpoint_every", "kill_after")})
    seconds = run_logged(train_cmd(cfg_ref), logs / "train_reference.log", rec.section, "reference run")
    rec.number("reference_seconds", round(seconds, 1))
    reference = records(root / "reference")
    keep_metrics(ctx, root / "reference", "reference")
    rec.check("reference run logged every step", [r["step"] for r in reference] == list(range(1, t["steps"] + 1)),
              f"{len(reference)} train records")
    path = fused_path_line(logs / "train_reference.log")
    rec.number("output_path", path)
    rec.check("KD at alpha_ce 0 on the fused output path", path.startswith("fused output on") and all(
        "ce" in r and "kd" in r and abs(r["loss"] - r["kd"]) <= 1e-6 * max(1.0, abs(r["kd"])) for r in reference),
        f"{path}; loss == kd at every step (alpha_ce 0, beta_kd 1)")
    rec.artifact("train.reference_run", str(root / "reference"))
    rec.artifact("train.reference_config", str(cfg_ref))

    killed_at, code = _run_and_kill(train_cmd(cfg_kill), logs / "train_killed.log", root / "killed", t["kill_after"],
                                    rec.section)
    saved = _checkpoint_steps(root / "killed")
    if saved:  # the parallel section resumes this checkpoint at PP=2 (the resumed run below replaces it)
        keep = ctx.work / "train" / "killed_checkpoint"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(root / "killed" / "checkpoints" / f"step_{max(saved):07d}", keep / f"step_{max(saved):07d}",
                        copy_function=os.link)  # hard links: no copy of GBs; the resumed run may delete its own
        rec.artifact("train.killed_checkpoint", str(keep / f"step_{max(saved):07d}"))
    rec.number("killed_at_step", killed_at)
    rec.number("checkpoints_at_kill", saved)
    rec.check("killed by SIGKILL mid-run", code == -signal.SIGKILL and killed_at < t["steps"],
              f"return code {code}, last logged step {killed_at} of {t['steps']}")
    rec.check("a checkpoint before the kill", bool(saved) and max(saved) <= killed_at, f"checkpoints {saved}")
    seconds = run_logged(train_cmd(cfg_kill, "--resume"), logs / "train_resumed.log", rec.section, "resumed run")
    rec.number("resumed_seconds", round(seconds, 1))
    resumed = records(root / "killed")
    keep_metrics(ctx, root / "killed", "resumed")
    resumed_from = max(saved) if saved else 0
    rec.number("resumed_from_step", resumed_from)
    rec.check("resumed run logged every step once", [r["step"] for r in resumed] == list(range(1, t["steps"] + 1)),
              f"steps {[r['step'] for r in resumed][:3]}...{[r['step'] for r in resumed][-3:]}")
    after = [r for r in resumed if r["step"] > resumed_from]
    ref_after = [r for r in reference if r["step"] > resumed_from]
    rtol = profile.resume_rtol
    loss_diff = max_rel_diff([r["loss"] for r in after], [r["loss"] for r in ref_after])
    rec.number("resume_max_rel_loss_diff", loss_diff)
    rec.number("loss_curves", {"reference": [r["loss"] for r in reference], "resumed": [r["loss"] for r in resumed]})
    rec.check("resumed losses continue the reference", bool(after) and loss_diff <= rtol,
              f"steps {resumed_from + 1}..{t['steps']}: max rel diff {loss_diff:.2e} (tolerance {rtol:g})")
    rec.check("resumed LR schedule == reference", [r["lr"] for r in after] == [r["lr"] for r in ref_after])
    valid_ref, valid_res = records(root / "reference", "valid"), records(root / "killed", "valid")
    valid_diff = max_rel_diff([r["valid_loss"] for r in valid_res], [r["valid_loss"] for r in valid_ref])
    rec.check("resumed validation losses == reference", len(valid_res) == len(valid_ref) and valid_diff <= rtol,
              f"{len(valid_res)} evaluations, max rel diff {valid_diff:.2e}")
