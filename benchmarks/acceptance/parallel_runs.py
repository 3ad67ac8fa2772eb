"""Section `parallel`: the KD run at TP=2 and at PP=2 under torchrun, against the one-GPU reference.

tp2  the reference config at ``parallel.tp=2`` from the same random init: a random init is drawn whole on the
     host and sliced per TP rank (models/config.py ``initialize_on_host``), so TP=2 starts from TP=1's weights
     and its loss curve must follow the reference's step by step.
pp2  the killed run's checkpoint (train_resume) resumed at ``parallel.pp=2``: the checkpoint reshards to two
     pipeline stages (each with its own RNG streams) and the steps after it must continue the reference's.

Each needs one GPU per rank: on one GPU the section is skipped and says why (NCCL refuses two ranks on one
device, and ``init_runtime`` refuses them first). The CPU smoke run uses two gloo ranks.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
from pathlib import Path

from .fixtures import run_config, write_yaml
from .profiles import PROFILES
from .training import WARMUP_STEPS_SKIPPED, fused_path_line, keep_metrics, max_rel_diff, records, run_logged


def precheck(ctx) -> str | None:
    """Why two ranks cannot run here (None: they can). Runs in the parent, so a one-GPU machine starts nothing."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= 2 or (gpus == 0 and PROFILES[ctx.profile].parallel_on_cpu):
        return None
    return (f"{gpus} CUDA device(s) visible; TP=2 and PP=2 need 2, one rank per GPU (NCCL refuses two ranks on "
            "one device)")


def _torchrun(config: Path, log: Path, section: str, what: str, *extra: str) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}", "-m", "nemo_subnet.cli", "train", "--config", str(config), *extra]
    return run_logged(cmd, log, section, what)


def _follows(rec, name: str, ours: list[dict], reference: list[dict], first_step: int, rtol: float) -> None:
    ref = [r for r in reference if r["step"] >= first_step]
    rec.check(f"{name} run logged every step from {first_step}", [r["step"] for r in ours] == [r["step"] for r in ref],
              f"steps {[r['step'] for r in ours]}")
    diff = max_rel_diff([r["loss"] for r in ours], [r["loss"] for r in ref])
    rec.number(f"{name}_max_rel_loss_diff", diff)
    rec.number(f"{name}_loss_curve", [r["loss"] for r in ours])
    rec.check(f"{name} losses == the one-GPU reference's", bool(ours) and diff <= rtol,
              f"steps {first_step}..{ref[-1]['step'] if ref else '?'}: max rel diff {diff:.2e} (tolerance {rtol:g})")
    timed = [r["mfu"] for r in ours[WARMUP_STEPS_SKIPPED:] if r.get("mfu") is not None]
    if timed:
        rec.number(f"{name}_median_mfu", statistics.median(timed))


def _tp2(ctx, rec, profile, reference: list[dict]) -> None:
    root = ctx.work / "parallel" / "tp2"
    config = run_config(profile, ctx.artifacts, root / "run", tp=2, checkpoint_every=0, peak_flops=ctx.peak_flops)
    log = ctx.out / "logs" / "train_tp2.log"
    seconds = _torchrun(write_yaml(root / "tp2.yaml", config), log, rec.section, "TP=2 run (torchrun, 2 ranks)")
    rec.number("tp2_seconds", round(seconds, 1))
    keep_metrics(ctx, root / "run", "tp2")
    rec.check("TP=2 on the fused output path", fused_path_line(log).startswith("fused output on"), fused_path_line(log))
    _follows(rec, "tp2", records(root / "run"), reference, 1, profile.parallel_rtol)


def _pp2(ctx, rec, profile, reference: list[dict]) -> None:
    checkpoint = Path(ctx.artifacts["train.killed_checkpoint"])
    root = ctx.work / "parallel" / "pp2"
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(checkpoint, run_dir / "checkpoints" / checkpoint.name, copy_function=os.link)
    config = run_config(profile, ctx.artifacts, run_dir, pp=2, checkpoint_every=0, peak_flops=ctx.peak_flops)
    step = int(checkpoint.name.split("_")[1])
    seconds = _torchrun(write_yaml(root / "pp2.yaml", config), ctx.out / "logs" / "train_pp2.log", rec.section,
                        f"PP=2 run resuming step {step} (torchrun, 2 ranks)", "--resume")
    rec.number("pp2_seconds", round(seconds, 1))
    keep_metrics(ctx, run_dir, "pp2")
    _follows(rec, "pp2", records(run_dir), reference, step + 1, profile.parallel_rtol)


def run(ctx, rec) -> None:
    profile = PROFILES[ctx.profile]
    reason = precheck(ctx)
    if reason:
        rec.skip(reason)
        return
    reference = records(Path(ctx.artifacts["train.reference_run"]))
    _tp2(ctx, rec, profile, reference)
    _pp2(ctx, rec, profile, reference)
