"""TP=2, PP=2 and DP=2 distillation runs (torchrun, gloo) follow the TP=1 loss curve (CE, KD and validation)."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_helpers import CLI, env, metrics, run_config, run_train, write_yaml
from torchrun_utils import run_torchrun

LAYOUTS = {"tp2": {"tp": 2, "pp": 1}, "pp2": {"tp": 1, "pp": 2}, "dp2": {"tp": 1, "pp": 1}, "tp2pp2": {"tp": 2, "pp": 2}}
RANKS = {"tp2": 2, "pp2": 2, "dp2": 2, "tp2pp2": 4}
VARIANTS = {
    "kd": {"alpha_ce": 0.5, "beta_kd": 0.5, "temperature": 2.0},
    "topk_jsd": {"alpha_ce": 0.0, "beta_kd": 1.0, "divergence": "jsd", "beta_jsd": 0.3, "top_k": 8},
}
# CE is in every case (alpha_ce > 0 or logged); dense KD under TP, PP (teacher co-pipelined), DP and TP x PP;
# top-k + JSD under TP
CASES = [("tp2", "kd"), ("pp2", "kd"), ("dp2", "kd"), ("tp2pp2", "kd"), ("tp2", "topk_jsd")]


def _config(root, data_dir, student_ckpt, teacher_ckpt, variant: str, parallel: dict, name: str):
    distill = {**VARIANTS[variant], "teacher": str(teacher_ckpt)}
    config = run_config(root, root / name, data_dir, {"from_checkpoint": str(student_ckpt)},
                        schedule={"train_steps": 4, "warmup_steps": 1}, distill=distill,
                        checkpoint={"every_steps": 0, "keep_last": 1}, parallel=parallel,
                        logging={"eval_every": 2, "eval_iters": 2, "progress": False, "tensorboard": False})
    return write_yaml(root / f"{name}.yaml", config)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, student_ckpt, teacher_ckpt):
    """TP=1 runs of each variant, one process."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for variant in {v for _, v in CASES}:
        run_train(_config(root, data_dir, student_ckpt, teacher_ckpt, variant, {"tp": 1, "pp": 1}, variant))
        runs[variant] = root / variant
    return runs


@pytest.mark.distributed
@pytest.mark.parametrize("layout,variant", CASES)
def test_parallel_layout_matches_tp1(tmp_path, data_dir, student_ckpt, teacher_ckpt, reference, layout, variant):
    config = _config(tmp_path, data_dir, student_ckpt, teacher_ckpt, variant, LAYOUTS[layout], "run")
    run_torchrun(str(CLI), RANKS[layout], "train", "--config", str(config), env={"PYTHONWARNINGS": "ignore"})
    ours, ref = metrics(tmp_path / "run"), metrics(reference[variant])
    keys = ["loss", "ce", "kd"]
    for key in keys:
        torch.testing.assert_close(torch.tensor([r[key] for r in ours], dtype=torch.float64),
                                   torch.tensor([r[key] for r in ref], dtype=torch.float64), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(torch.tensor([r["valid_loss"] for r in metrics(tmp_path / "run", "valid")]),
                               torch.tensor([r["valid_loss"] for r in metrics(reference[variant], "valid")]),
                               rtol=2e-5, atol=2e-5)
    # the saved student is the student only (the 4-layer teacher is never written), at the TP=1 layout's config
    saved = yaml.safe_load((tmp_path / "run" / "checkpoints" / "step_0000004" / "model.yaml").read_text())
    assert saved["num_layers"] == 2 and saved["hidden_size"] == 64
