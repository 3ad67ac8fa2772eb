"""Preemption is never success: a training stage on a real SLURM is requeued mid-run twice, resumes from its
checkpoint each time, is never marked done in between, and its loss curve equals an uninterrupted run's.

The two interruptions are the two ways a cluster stops a job:

1. the scheduler (preemption, ``scontrol requeue``): SIGTERM to every process of the job, then SLURM requeues
   it. Done here with ``scontrol requeuehold`` (the same requeue, held) so the test can look at the stopped
   stage before it continues: checkpoint at the stopped step, no done marker, the train CLI said "stopped".
2. the time limit: ``--signal=B:USR1@<grace>`` warns the batch shell, which sends SIGTERM to the ranks and,
   once they have saved, requeues the job itself. Done here with ``scancel --signal=USR1 --batch``, which is
   exactly what SLURM sends at ``<grace>`` seconds before the limit.

No timing race: each interruption waits for a checkpoint newer than the last one (one every step), and the
run has many steps left then. ``scontrol update StartTime=now`` skips SLURM's delay before a requeued job may
start again (test speed only). CPU, one rank, one OpenMP thread on both sides: the curves must be bit-equal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import cli_env, nemo_subnet, run_cli  # noqa: E402
from slurm_utils import job_field, require_slurm, scontrol, wait_for  # noqa: E402

STEPS = 16
OVERRIDES = [f"config.teacher_train.schedule.train_steps={STEPS}", "config.teacher_train.checkpoint.every_steps=1",
             "config.teacher_train.logging.eval_every=5", "config.data.max_bytes=60000", "config.data.vocab_size=512"]


def _latest_step(run_dir: Path) -> int:
    steps = [json.loads(p.read_text())["step"] for p in (run_dir / "checkpoints").glob("step_*/train_state.json")]
    return max(steps, default=0)


def _curve(run_dir: Path) -> tuple[list, list]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows if r["kind"] == "train"]
    valid = [(r["step"], r["valid_loss"]) for r in rows if r["kind"] == "valid"]
    return train, valid


def _stopped(job: str, restarts: int) -> bool:
    """Requeued and gone from the node. SLURM reports a requeued job PENDING while its previous instance is still
    completing there (the batch shell that called ``scontrol requeue`` runs on to its exit); forcing a start then
    makes the next launch fail at once (CI, stop 27: ExitCode=1:0, RunTime 0, nothing logged)."""
    if job_field(job, "Restarts") != str(restarts) or job_field(job, "JobState") != "PENDING":
        return False
    if "COMPLETING" in (job_field(job, "Reason") or "") + subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout:
        return False
    steps = subprocess.run(["pgrep", "-f", rf"^slurmstepd: \[{job}\."], capture_output=True, text=True).stdout
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout
    return not steps.strip() and "comp" not in nodes


def _attempt_log(home: Path, attempt: int) -> str:
    logs = sorted(home.rglob(f"log-*teacher_*_{attempt}.out"))
    return logs[-1].read_text(errors="replace") if logs else ""


def _job_story(home: Path, job: str) -> str:
    """What a failed third attempt leaves: the job's record, the batch shell's trace and the attempt's log."""
    record = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    batch = next(home.rglob("sbatch_*teacher_*.out"), None)
    shell = batch.read_text(errors="replace")[-4000:] if batch else "(no batch output)"
    return f"{record}\n--- batch shell ---\n{shell}\n--- attempt 2 ---\n{_attempt_log(home, 2)[-3000:]}"


@pytest.mark.distributed
@pytest.mark.slow
def test_requeued_training_stage_resumes_and_equals_the_uninterrupted_run(tmp_path):
    from nemo_subnet.recipes.cli import resolve

    partition = require_slurm()
    ref, out = tmp_path / "ref", tmp_path / "out"
    # the uninterrupted reference, run here without SLURM
    config, _ = resolve("tiny", [f"config.out_dir={ref}", *OVERRIDES])
    config.save(tmp_path / "ref.yaml")
    subprocess.run([sys.executable, "-m", "nemo_subnet.pipeline", "--config", tmp_path / "ref.yaml", "--stage", "data",
                    "--stage", "teacher"], env=cli_env(tmp_path), check=True, timeout=900, capture_output=True)
    # the SLURM run reads the same prepared data (its data stage is reused: same fingerprint)
    shutil.copytree(ref / "data", out / "data")
    (out / ".stages").mkdir()
    shutil.copy(ref / ".stages" / "data.done.json", out / ".stages")

    account = f"requeue{os.getpid()}"
    proc = run_cli(nemo_subnet("run", "--factory", "tiny", "--stage", "teacher", "--detach", f"config.out_dir={out}",
                               *OVERRIDES, "launch.executor=slurm", f"launch.partition={partition}",
                               f"launch.account={account}", "launch.time=00:20:00",
                               "launch.env={OMP_NUM_THREADS: '1'}"), tmp_path, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    def find_job():  # NeMo-Run names it <account>-<account>.<task>
        listed = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.splitlines()
        return next((line.split()[0] for line in listed if line.endswith(f"{account}.teacher")), None)

    job = wait_for(find_job, "the teacher job in squeue", 60)
    run_dir, done = out / "teacher", out / ".stages" / "teacher.done.json"
    try:
        # 1. scheduler requeue (held so we can look in between)
        wait_for(lambda: _latest_step(run_dir) >= 1, "the first checkpoint", 600)
        scontrol("requeuehold", job)
        wait_for(lambda: _stopped(job, 1), "the job to stop and be requeued (held)", 120)
        first = _latest_step(run_dir)
        assert 1 <= first < STEPS, first
        assert not done.exists(), "a preempted stage was marked done"
        failed = json.loads((out / ".stages" / "teacher.failed.json").read_text())
        assert failed["interrupted"] is True and failed["exit_code"] == 75, (failed, _attempt_log(tmp_path, 0)[-4000:])
        assert _curve(run_dir)[0][-1][0] == first  # metrics end at the checkpointed step
        assert "train: stopped by SIGTERM" in _attempt_log(tmp_path, 0)
        scontrol("release", job)
        scontrol("update", f"JobId={job}", "StartTime=now")

        # 2. time limit: the batch shell's USR1 warning; the job requeues itself after the checkpoint
        wait_for(lambda: _latest_step(run_dir) > first, "a checkpoint after the resume", 600)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
        wait_for(lambda: _stopped(job, 2), "the job to requeue itself", 120)
        second = _latest_step(run_dir)
        assert first < second < STEPS, (first, second)
        assert not done.exists(), "a stage stopped at the time limit was marked done"
        assert "nemo-subnet: requeueing job" in (next(tmp_path.rglob("sbatch_*teacher_*.out")).read_text())
        scontrol("update", f"JobId={job}", "StartTime=now")

        wait_for(lambda: job_field(job, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), "the job to end", 600)
        assert job_field(job, "JobState") == "COMPLETED", _job_story(tmp_path, job)
    finally:
        subprocess.run(["scancel", job], capture_output=True)

    assert done.exists() and _latest_step(run_dir) == STEPS
    resumed, reference = _curve(run_dir), _curve(ref / "teacher")
    print(f"\nrequeued at steps {first} and {second}; train loss per step (requeued run):\n"
          f"{[round(r[1], 6) for r in resumed[0]]}\nuninterrupted:\n{[round(r[1], 6) for r in reference[0]]}")
    assert [r[0] for r in resumed[0]] == list(range(1, STEPS + 1))
    assert resumed == reference  # exact floats: step, loss, lr, grad norm, validation loss
