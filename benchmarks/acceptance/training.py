"""Sections `train_resume`, `mfu` and `tp2`: KD runs through the real CLI, as users launch them.

train_resume  an uninterrupted KD run (the reference); the same run SIGKILLed (the whole process group,
              as a node failure would) after its first checkpoint and ``--resume``d. The resumed
              metrics must hold every step once, the LR schedule exactly, and losses that continue the
              reference's within the profile's tolerance (bit-exact on CPU fp32; bf16 on GPU is not
              bit-reproducible: attention backward and reductions are not deterministic).
mfu           from the reference run's metrics: median tokens/s and the logged MFU (training/metrics.py),
              recomputed here from the FLOPs per token as a consistency check.
tp2           the reference config at tp=2 under torchrun (needs 2 GPUs; the CPU smoke run uses 2 gloo
              ranks); its loss curve against TP=1's. With one GPU the section is skipped and says why.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import statistics
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


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nemo_subnet.cli", "train", "--config", str(config), *extra]


def _records(run_dir: Path, kind: str = "train") -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") == kind]


def _run(cmd: list[str], log: Path, section: str, what: str) -> float:
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
                steps = [r["step"] for r in _records(run_dir)]
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
    return max(r["step"] for r in _records(run_dir)), proc.returncode


def _checkpoint_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("_")[1]) for p in folder.iterdir() if p.name.startswith("step_"))


def _max_rel_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=math.inf)


def _keep_metrics(ctx, run_dir: Path, name: str) -> None:
    """A copy of a run's metrics.jsonl under --out (the run directories themselves stay in the work dir)."""
    src = Path(run_dir) / "metrics.jsonl"
    if src.exists():
        dst = ctx.out / "runs" / f"{name}.metrics.jsonl"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def train_resume(ctx, rec) -> None:
    import torch

    from nemo_subnet.checkpointing import read_model_config
    from nemo_subnet.models import ModelConfig
    from nemo_subnet.models.counting import forward_flops_per_token
    from nemo_subnet.training.metrics import peak_flops

    profile, t = PROFILES[ctx.profile], PROFILES[ctx.profile].train
    root, logs = ctx.work / "train", ctx.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg_ref = write_yaml(root / "reference.yaml", run_config(profile, ctx.artifacts, root / "reference",
                                                             peak_flops=ctx.peak_flops))
    cfg_kill = write_yaml(root / "killed.yaml", run_config(profile, ctx.artifacts, root / "killed",
                                                           peak_flops=ctx.peak_flops))
    rec.number("run", {k: t[k] for k in ("seq_length", "micro_batch_size", "global_batch_size", "steps",
                                           "checkpoint_every", "kill_after")})
    seconds = _run(_train_cmd(cfg_ref), logs / "train_reference.log", rec.section, "reference run")
    rec.number("reference_seconds", round(seconds, 1))
    reference = _records(root / "reference")
    _keep_metrics(ctx, root / "reference", "reference")
    rec.check("reference run logged every step", [r["step"] for r in reference] == list(range(1, t["steps"] + 1)),
              f"{len(reference)} train records")
    rec.artifact("train.reference_run", str(root / "reference"))
    rec.artifact("train.reference_config", str(cfg_ref))

    student = ModelConfig.load(ctx.artifacts["setup.student_yaml"])
    teacher = read_model_config(ctx.artifacts["setup.teacher"])
    flops = 3 * forward_flops_per_token(student, t["seq_length"]) + forward_flops_per_token(teacher, t["seq_length"])
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    rec.artifact("train.flops_per_token", flops)
    rec.artifact("train.peak_flops", peak_flops(ctx.peak_flops, dtype))
    rec.artifact("train.device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")

    killed_at, code = _run_and_kill(_train_cmd(cfg_kill), logs / "train_killed.log", root / "killed", t["kill_after"],
                                    rec.section)
    saved = _checkpoint_steps(root / "killed")
    rec.number("killed_at_step", killed_at)
    rec.number("checkpoints_at_kill", saved)
    rec.check("killed by SIGKILL mid-run", code == -signal.SIGKILL and killed_at < t["steps"],
              f"return code {code}, last logged step {killed_at} of {t['steps']}")
    rec.check("a checkpoint before the kill", bool(saved) and max(saved) <= killed_at, f"checkpoints {saved}")
    seconds = _run(_train_cmd(cfg_kill, "--resume"), logs / "train_resumed.log", rec.section, "resumed run")
    rec.number("resumed_seconds", round(seconds, 1))
    resumed = _records(root / "killed")
    _keep_metrics(ctx, root / "killed", "resumed")
    resumed_from = max(saved) if saved else 0
    rec.number("resumed_from_step", resumed_from)
    rec.check("resumed run logged every step once", [r["step"] for r in resumed] == list(range(1, t["steps"] + 1)),
              f"steps {[r['step'] for r in resumed][:3]}...{[r['step'] for r in resumed][-3:]}")
    after = [r for r in resumed if r["step"] > resumed_from]
    ref_after = [r for r in reference if r["step"] > resumed_from]
    rtol = profile.resume_rtol
    loss_diff = _max_rel_diff([r["loss"] for r in after], [r["loss"] for r in ref_after])
    rec.number("resume_max_rel_loss_diff", loss_diff)
    rec.number("loss_curves", {"reference": [r["loss"] for r in reference], "resumed": [r["loss"] for r in resumed]})
    rec.check("resumed losses continue the reference", bool(after) and loss_diff <= rtol,
              f"steps {resumed_from + 1}..{t['steps']}: max rel diff {loss_diff:.2e} (tolerance {rtol:g})")
    rec.check("resumed LR schedule == reference", [r["lr"] for r in after] == [r["lr"] for r in ref_after])
    valid_ref, valid_res = _records(root / "reference", "valid"), _records(root / "killed", "valid")
    valid_diff = _max_rel_diff([r["valid_loss"] for r in valid_res], [r["valid_loss"] for r in valid_ref])
    rec.check("resumed validation losses == reference", len(valid_res) == len(valid_ref) and valid_diff <= rtol,
              f"{len(valid_res)} evaluations, max rel diff {valid_diff:.2e}")


def mfu(ctx, rec) -> None:
    records = _records(Path(ctx.artifacts["train.reference_run"]))
    timed = [r for r in records if r["step"] > WARMUP_STEPS_SKIPPED] or records
    flops, peak = ctx.artifacts["train.flops_per_token"], ctx.artifacts["train.peak_flops"]
    tps = statistics.median(r["tokens_per_s"] for r in timed)
    rec.number("steps_timed", f"{timed[0]['step']}..{timed[-1]['step']}")
    rec.number("median_step_time_s", statistics.median(r["step_time_s"] for r in timed))
    rec.number("median_tokens_per_s", tps)
    rec.number("flops_per_token", flops)
    rec.number("achieved_tflops_per_s", tps * flops / 1e12)
    rec.number("peak_flops", peak)
    if peak is None:
        rec.check("MFU known", False, f"no peak FLOP/s for {ctx.artifacts['train.device']}: pass --peak-flops")
        return
    logged = [r["mfu"] for r in timed]
    rec.number("median_mfu", statistics.median(m for m in logged if m is not None) if any(logged) else None)
    rec.check("every step logs MFU", all(isinstance(m, float) and 0 < m < 1 for m in logged),
              f"{sum(m is not None for m in logged)} of {len(logged)} steps, range "
              f"{min((m for m in logged if m), default=0):.4f}..{max((m for m in logged if m), default=0):.4f}")
    recomputed = [r["tokens_per_s"] * flops / peak for r in timed]  # world size 1
    worst = _max_rel_diff([m or 0.0 for m in logged], recomputed)
    rec.check("logged MFU == tokens/s x FLOPs/token / peak", worst <= 1e-6, f"max rel diff {worst:.1e}")


def tp2_precheck(ctx) -> str | None:
    """Why TP=2 cannot run here (None: it can). Runs in the parent, so a one-GPU machine starts nothing."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= 2 or (gpus == 0 and PROFILES[ctx.profile].tp2_on_cpu):
        return None
    return f"{gpus} CUDA device(s) visible; TP=2 needs 2 (one rank per GPU)"


def tp2(ctx, rec) -> None:
    profile = PROFILES[ctx.profile]
    reason = tp2_precheck(ctx)
    if reason:
        rec.skip(reason)
        return
    root = ctx.work / "tp2"
    config = run_config(profile, ctx.artifacts, root / "run", tp=2, checkpoint_every=0, peak_flops=ctx.peak_flops)
    cfg_path = write_yaml(root / "tp2.yaml", config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}", "-m", "nemo_subnet.cli", "train", "--config", str(cfg_path)]
    seconds = _run(cmd, ctx.out / "logs" / "train_tp2.log", rec.section, "TP=2 run (torchrun, 2 ranks)")
    rec.number("seconds", round(seconds, 1))
    _keep_metrics(ctx, root / "run", "tp2")
    ours, reference = _records(root / "run"), _records(Path(ctx.artifacts["train.reference_run"]))
    rec.check("TP=2 run logged every step", [r["step"] for r in ours] == [r["step"] for r in reference])
    diff = _max_rel_diff([r["loss"] for r in ours], [r["loss"] for r in reference])
    rec.number("max_rel_loss_diff_vs_tp1", diff)
    rec.number("loss_curve", [r["loss"] for r in ours])
    rec.check("TP=2 losses == TP=1 losses", bool(ours) and diff <= profile.tp2_rtol,
              f"max rel diff {diff:.2e} (tolerance {profile.tp2_rtol:g})")
    if ours and ours[-1].get("mfu") is not None:
        rec.number("median_mfu", statistics.median(r["mfu"] for r in ours[WARMUP_STEPS_SKIPPED:] or ours))
