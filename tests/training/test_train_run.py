"""End-to-end single-rank runs through the CLI: learning, run-directory layout, kill/resume, SIGTERM, NaN."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import time
from pathlib import Path

import yaml
from train_helpers import env, metrics, run_config, run_train, train_cmd, write_yaml


def test_loss_decreases_and_run_dir_layout(baseline_run: Path):
    train = metrics(baseline_run)
    valid = metrics(baseline_run, "valid")
    assert [r["step"] for r in train] == list(range(1, 13))
    assert train[0]["loss"] > 6.0  # ~ln(500): a random model is near uniform over the true vocabulary
    assert sum(r["loss"] for r in train[-3:]) / 3 < train[0]["loss"] - 0.5
    assert [r["step"] for r in valid] == [6, 12] and valid[1]["valid_loss"] < valid[0]["valid_loss"]
    assert abs(valid[1]["valid_ppl"] / math.exp(valid[1]["valid_loss"]) - 1) < 1e-6
    assert train[-1]["tokens"] == 12 * 4 * 64 and train[-1]["tokens_per_s"] > 0 and train[-1]["mfu"] is None
    assert train[1]["lr"] > train[0]["lr"] > 0 and train[-1]["lr"] < train[2]["lr"]  # warmup, then cosine decay
    # keep_last = 2 of the checkpoints at steps 3, 6, 9, 12; nothing half-written left behind
    assert sorted(p.name for p in (baseline_run / "checkpoints").iterdir()) == ["step_0000009", "step_0000012"]
    step12 = baseline_run / "checkpoints" / "step_0000012"
    assert {p.name for p in step12.iterdir()} >= {"model.yaml", "weights", "train_state.json", "rng", "tokenizer"}
    state = json.loads((step12 / "train_state.json").read_text())
    assert state["step"] == 12 and state["data"]["consumed_samples"] == 48
    assert yaml.safe_load((baseline_run / "config.yaml").read_text())["schedule"]["train_steps"] == 12
    assert list((baseline_run / "tb").glob("events.out.tfevents.*"))


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    path = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def test_resume_after_sigkill_is_bit_exact(tmp_path, data_dir, model_yaml, baseline_run):
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path, tmp_path / "run", data_dir, {"random": str(model_yaml)}))
    kill_at = random.Random().randint(4, 10)  # after the first checkpoint (step 3), anywhere before the end
    proc = subprocess.Popen(train_cmd(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env())
    try:
        _wait_for_step(tmp_path / "run", proc, kill_at)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run_train(config, "--resume")
    resumed, reference = metrics(tmp_path / "run"), metrics(baseline_run)
    assert [r["step"] for r in resumed] == list(range(1, 13)), f"killed at step {kill_at}"
    for key in ("loss", "lr", "grad_norm"):  # exact float equality, not a tolerance
        assert [r[key] for r in resumed] == [r[key] for r in reference], (key, kill_at)
    assert [r["valid_loss"] for r in metrics(tmp_path / "run", "valid")] == [
        r["valid_loss"] for r in metrics(baseline_run, "valid")]


def test_sigterm_checkpoints_and_exits_preempted(tmp_path, data_dir, model_yaml):
    sections = {"schedule": {"train_steps": 1000, "warmup_steps": 2}, "checkpoint": {"every_steps": 0, "keep_last": 2}}
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path, tmp_path / "run", data_dir, {"random": str(model_yaml)},
                                                          **sections))
    proc = subprocess.Popen(train_cmd(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    _wait_for_step(tmp_path / "run", proc, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    from nemo_subnet.training.cli import EXIT_PREEMPTED

    assert proc.returncode == EXIT_PREEMPTED == 75, err[-3000:]  # not finished: never 0
    assert "preempted" in out
    last = metrics(tmp_path / "run")[-1]["step"]
    assert 2 <= last < 1000
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == [f"step_{last:07d}"]
    assert json.loads((tmp_path / "run" / "checkpoints" / saved[0] / "train_state.json").read_text())["step"] == last


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, data_dir, model_yaml):
    sections = {"optimizer": {"lr": 1e6, "clip_grad": 0.0, "max_skipped_steps": 0},
                "schedule": {"train_steps": 12, "warmup_steps": 0},
                "checkpoint": {"every_steps": 1, "keep_last": 2}}
    config = write_yaml(tmp_path / "run.yaml", run_config(tmp_path, tmp_path / "run", data_dir, {"random": str(model_yaml)},
                                                          **sections))
    proc = run_train(config, check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("nemo-subnet train: error: non-finite loss or gradients at step"), message
    bad_step = int(message.split("at step ")[1].split()[0])
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts[-1] == f"step_{bad_step - 1:07d}" and not [c for c in ckpts if c.startswith(".")]
    state = json.loads((tmp_path / "run" / "checkpoints" / ckpts[-1] / "train_state.json").read_text())
    assert state["step"] == bad_step - 1


def test_training_checkpoint_loads_as_a_model_and_exports(baseline_run: Path, tmp_path, megatron_runtime):
    """A training checkpoint (weights + optimizer) is also a model checkpoint: plain, elastic, and HF export."""
    import torch
    from transformers import AutoModelForCausalLM

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.conversion.hf_export import export_hf
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.subnet.supernet import build_supernet

    step12 = baseline_run / "checkpoints" / "step_0000012"
    cfg, model = load_model(step12)
    _, supernet = load_model(step12, builder=build_supernet)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    logits = forward_logits(model, cfg, tokens)
    assert torch.equal(forward_logits(supernet, cfg, tokens), logits)
    export_hf(step12, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert (hf(tokens).logits - logits.cpu()).abs().max().item() <= 1e-4  # HF runs on the host
