"""Memory / throughput options of a training run (parallel.*): same losses as without them, clear errors
where they cannot run. Activation recompute is exact (the same ops, run again); overlapped gradient
reduction and parameter gathering only move communication in time; sequence parallelism only changes
which rank holds which tokens outside attention and the MLP."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_helpers import CLI, metrics, run_config, run_train, write_yaml
from torchrun_utils import run_torchrun

from nemo_subnet.cli import UserError
from nemo_subnet.training import TrainConfig

KD = {"alpha_ce": 0.5, "beta_kd": 0.5, "temperature": 2.0}


def _config(root, name, data_dir, student_ckpt, teacher_ckpt, parallel: dict):
    config = run_config(root, root / name, data_dir, {"from_checkpoint": str(student_ckpt)},
                        schedule={"train_steps": 3, "warmup_steps": 1},
                        distill={**KD, "teacher": str(teacher_ckpt)}, parallel=parallel,
                        checkpoint={"every_steps": 0, "keep_last": 1},
                        logging={"eval_every": 0, "eval_iters": 2, "progress": False, "tensorboard": False})
    return write_yaml(root / f"{name}.yaml", config)


def _losses(run_dir) -> torch.Tensor:
    return torch.tensor([[r["loss"], r["ce"], r["kd"], r["grad_norm"]] for r in metrics(run_dir)], dtype=torch.float64)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, data_dir, student_ckpt, teacher_ckpt):
    root = tmp_path_factory.mktemp("plain")
    run_train(_config(root, "plain", data_dir, student_ckpt, teacher_ckpt, {}))
    return root / "plain"


@pytest.mark.parametrize("recompute", [{"recompute": "selective"}, {"recompute": "full", "recompute_num_layers": 1}])
def test_activation_recompute_gives_the_same_steps(tmp_path, data_dir, student_ckpt, teacher_ckpt, plain_run, recompute):
    run_train(_config(tmp_path, "recompute", data_dir, student_ckpt, teacher_ckpt, recompute))
    torch.testing.assert_close(_losses(tmp_path / "recompute"), _losses(plain_run), rtol=1e-6, atol=1e-7)


@pytest.mark.distributed
def test_overlapped_grad_reduce_and_param_gather_at_dp2(tmp_path, data_dir, student_ckpt, teacher_ckpt):
    runs = {}
    for name, parallel in (("sync", {}), ("overlap", {"overlap_grad_reduce": True, "overlap_param_gather": True})):
        config = _config(tmp_path, name, data_dir, student_ckpt, teacher_ckpt, parallel)
        run_torchrun(str(CLI), 2, "train", "--config", str(config), env={"PYTHONWARNINGS": "ignore"})
        runs[name] = tmp_path / name
    torch.testing.assert_close(_losses(runs["overlap"]), _losses(runs["sync"]), rtol=1e-5, atol=1e-6)
    # the checkpoint written with overlapped gathering holds the updated (gathered) parameters
    final = yaml.safe_load((runs["overlap"] / "checkpoints" / "step_0000003" / "train_state.json").read_text())
    assert final["step"] == 3


@pytest.mark.distributed
def test_sequence_parallel_with_fused_output_at_tp2_follows_tp1(tmp_path, data_dir, student_ckpt, teacher_ckpt,
                                                                 plain_run):
    config = yaml.safe_load(_config(tmp_path, "sp", data_dir, student_ckpt, teacher_ckpt,
                                    {"tp": 2, "sequence_parallel": True}).read_text())
    config["distill"]["fused_output"] = "on"
    path = write_yaml(tmp_path / "sp.yaml", config)
    run_torchrun(str(CLI), 2, "train", "--config", str(path), env={"PYTHONWARNINGS": "ignore"})
    torch.testing.assert_close(_losses(tmp_path / "sp"), _losses(plain_run), rtol=2e-5, atol=2e-5)
    saved = yaml.safe_load((tmp_path / "sp" / "config.yaml").read_text())
    assert saved["parallel"]["sequence_parallel"] and saved["distill"]["fused_output"] == "on"


@pytest.mark.parametrize("parallel,optimizer,message", [
    ({"sequence_parallel": True}, {}, "needs tp > 1"),
    ({"overlap_param_gather": True}, {"use_distributed_optimizer": False}, "needs optimizer.use_distributed_optimizer"),
    ({"recompute": "everything"}, {}, "parallel.recompute: 'everything' is not allowed; allowed: none, selective, full"),
])
def test_option_errors(tmp_path, parallel, optimizer, message):
    path = write_yaml(tmp_path / "run.yaml", {"init": {"random": "m.yaml"}, "data": {"path": "d"}, "parallel": parallel,
                                              "optimizer": optimizer})
    with pytest.raises(UserError, match=message):
        TrainConfig.load(path).validate()
