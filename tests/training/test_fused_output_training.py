"""Training through the fused output layer (``distill.fused_output``) equals training on full logits.

- the option: YAML spellings, refusal of anything else, and when ``auto`` turns it on;
- one KD / top-k / CE step (loss, validation CE, every reduced gradient in megatron's grad buffer, the output
  and tied embedding weights included) fused == logits at TP=1, TP=2 and PP=2, and at TP=2 with sequence
  parallelism both equal the step without it (fused_output_worker.py:
  two chunks per micro-batch, padding on the last shard, the tied embedding's all-reduce between stages);
- a short KD run through the CLI with fused on follows the run with fused off, and a top-k run at TP=2 with
  fused on follows the TP=1 run on logits.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import CLI, env, metrics, run_config, run_train, write_yaml
from torchrun_utils import run_torchrun

from nemo_subnet.cli import UserError
from nemo_subnet.training import TrainConfig
from nemo_subnet.training.distill import describe_fused_output, fused_output_enabled

WORKER = Path(__file__).parent / "fused_output_worker.py"
WORKER_CASES = ["fkl", "fkl_tied", "rkl", "topk_jsd", "topk_fkl_ce_tied", "ce", "ce_tied", "fkl_bf16"]


@pytest.mark.parametrize("text,expected", [("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on")])
def test_fused_output_yaml_spellings(tmp_path, text, expected):
    path = tmp_path / "run.yaml"
    path.write_text(f"init: {{random: m.yaml}}\ndata: {{path: d}}\ndistill: {{fused_output: {text}}}\n")
    config = TrainConfig.load(path)
    config.validate()
    assert config.distill.fused_output == expected
    assert TrainConfig.load(path, [f"distill.fused_output={text}"]).distill.fused_output == expected


def test_fused_output_bad_value_is_one_clear_error(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"init": {"random": "m.yaml"}, "data": {"path": "d"}})
    with pytest.raises(UserError, match=r"distill.fused_output: 'yes please' is not allowed; allowed: auto, on, off"):
        TrainConfig.load(path, ["distill.fused_output=yes please"])
    config = TrainConfig.load(path)
    config.distill.fused_output = "fast"  # built in Python, not read from YAML
    with pytest.raises(UserError, match="distill.fused_output: 'fast' is not allowed; allowed: auto, on, off"):
        config.validate()


def test_auto_turns_on_when_a_micro_batch_spans_more_than_one_chunk():
    # tiny test runs: 2 x 64 tokens, V/tp = 512: one chunk holds them all, nothing to save
    assert not fused_output_enabled("auto", 128, 512)
    # llama-3 vocabulary at TP=1, micro-batch 4 x 2048: chunks of 1024 tokens
    assert fused_output_enabled("auto", 8192, 128256)
    assert not fused_output_enabled("auto", 1024, 128256) and fused_output_enabled("auto", 1025, 128256)
    assert fused_output_enabled("on", 128, 512) and not fused_output_enabled("off", 8192, 128256)
    with pytest.raises(ValueError, match="not one of auto, on, off"):
        fused_output_enabled("yes", 1, 1)


def test_the_run_says_which_output_path_it_took():
    assert describe_fused_output("auto", 128, 512) == (
        "fused output off (full logits): auto, 128 tokens per micro-batch at V/tp = 512 make 1 chunk(s) of 128 "
        "tokens; one chunk would save nothing")
    assert describe_fused_output("auto", 8192, 128256) == (
        "fused output on (loss from hidden states, logits chunk by chunk): auto, 8192 tokens per micro-batch at "
        "V/tp = 128256 make 8 chunk(s) of 1024 tokens")
    assert describe_fused_output("off", 8192, 128256) == "fused output off (full logits): distill.fused_output is off"


def _check_worker(output: str, n_ranks: int, tag: str = "") -> None:
    for case in WORKER_CASES:
        assert len(re.findall(rf"FUSED OK {tag}{case} rank=", output)) == n_ranks, (case, output[-3000:])
    print("\n".join(line for line in output.splitlines() if line.startswith("FUSED OK")))


def test_fused_step_equals_logits_step_tp1():
    proc = subprocess.run([sys.executable, str(WORKER), *WORKER_CASES], capture_output=True, text=True, env=env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    _check_worker(proc.stdout, 1)


@pytest.mark.distributed
@pytest.mark.parametrize("layout", [["--tp", "2"], ["--pp", "2"], ["--tp", "2", "--sequence-parallel"]],
                         ids=["tp2", "pp2", "tp2_sp"])
def test_fused_step_equals_logits_step_parallel(layout):
    tag = "sp " if "--sequence-parallel" in layout else ""
    _check_worker(run_torchrun(str(WORKER), 2, *layout, *WORKER_CASES, env={"PYTHONWARNINGS": "ignore"}), 2, tag)


def _run(root, data_dir, student_ckpt, teacher_ckpt, name: str, distill: dict, parallel: dict | None = None,
         nproc: int = 1) -> Path:
    config = run_config(root, root / name, data_dir, {"from_checkpoint": str(student_ckpt)},
                        schedule={"train_steps": 4, "warmup_steps": 1},
                        distill={**distill, "teacher": str(teacher_ckpt)}, parallel=parallel or {},
                        checkpoint={"every_steps": 0, "keep_last": 1, "save_final": False},
                        logging={"eval_every": 2, "eval_iters": 2, "progress": False, "tensorboard": False})
    path = write_yaml(root / f"{name}.yaml", config)
    if nproc == 1:
        (root / name / "stdout.txt").write_text(run_train(path).stdout)
    else:
        run_torchrun(str(CLI), nproc, "train", "--config", str(path), env={"PYTHONWARNINGS": "ignore"})
    return root / name


def _assert_same_curves(ours: Path, ref: Path, tol: float) -> None:
    for kind, keys in (("train", ("loss", "ce", "kd")), ("valid", ("valid_loss",))):
        a, b = metrics(ours, kind), metrics(ref, kind)
        assert [r["step"] for r in a] == [r["step"] for r in b] and a, (kind, a, b)
        for key in keys:
            got = torch.tensor([r[key] for r in a], dtype=torch.float64)
            want = torch.tensor([r[key] for r in b], dtype=torch.float64)
            print(kind, key, "max|diff|", float((got - want).abs().max()))
            torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=f"{kind} {key}")


def test_fused_kd_run_follows_logits_run(tmp_path, data_dir, student_ckpt, teacher_ckpt):
    distill = {"alpha_ce": 0.5, "beta_kd": 0.5, "temperature": 2.0}
    off = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, "off", {**distill, "fused_output": "off"})
    on = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, "on", {**distill, "fused_output": "on"})
    assert "train: fused output on (loss from hidden states" in (on / "stdout.txt").read_text()
    _assert_same_curves(on, off, 2e-5)
    saved = yaml.safe_load((on / "config.yaml").read_text())
    assert saved["distill"]["fused_output"] == "on"


@pytest.mark.distributed
def test_fused_topk_run_at_tp2_follows_tp1_logits_run(tmp_path, data_dir, student_ckpt, teacher_ckpt):
    distill = {"alpha_ce": 0.0, "beta_kd": 1.0, "divergence": "jsd", "beta_jsd": 0.3, "top_k": 8}
    ref = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, "tp1_off", {**distill, "fused_output": "off"})
    tp2 = _run(tmp_path, data_dir, student_ckpt, teacher_ckpt, "tp2_on", {**distill, "fused_output": "on"},
               {"tp": 2}, nproc=2)
    _assert_same_curves(tp2, ref, 2e-5)
