"""The memory / throughput options of a recipe's training runs reach the run config that `nemo-subnet train` reads:
the pipeline's ``student_train`` section is the ``TrainConfig`` itself, serialized for the child."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_subnet import config as configs
from nemo_subnet.cli import UserError
from nemo_subnet.pipeline.stages import train_run
from nemo_subnet.recipes.cli import resolve
from nemo_subnet.training import TrainConfig


def _run_config(tmp_path: Path, overrides: list[str]) -> TrainConfig:
    config, _ = resolve("tiny", overrides)
    run = train_run(config.student_train, tmp_path / "run", tmp_path / "data", init_random=tmp_path / "m.yaml",
                    teacher=tmp_path / "teacher")
    return TrainConfig.load(configs.save(run, tmp_path / "run.yaml"))


def test_recipe_training_options_reach_the_run(tmp_path):
    train = _run_config(tmp_path, ["config.student_train.parallel.recompute=full",
                                   "config.student_train.parallel.overlap_grad_reduce=true",
                                   "config.student_train.parallel.overlap_param_gather=true",
                                   "config.student_train.distill.fused_output=on"])
    train.validate()
    assert train.parallel.recompute == "full" and train.parallel.overlap_grad_reduce and train.parallel.overlap_param_gather
    assert train.optimizer.use_distributed_optimizer and train.distill.fused_output == "on"
    assert train.distill.teacher == tmp_path / "teacher" and train.init.random == tmp_path / "m.yaml"
    defaults = _run_config(tmp_path, [])
    assert (defaults.parallel.recompute, defaults.parallel.sequence_parallel, defaults.distill.fused_output) == (
        "none", False, "auto")
    # any TrainConfig field is a recipe setting, without the pipeline naming it
    assert _run_config(tmp_path, ["config.student_train.optimizer.weight_decay=0.02"]).optimizer.weight_decay == 0.02


def test_param_gather_overlap_without_the_distributed_optimizer_is_refused():
    with pytest.raises(UserError, match="student_train.parallel.overlap_param_gather: needs "
                                        "optimizer.use_distributed_optimizer"):
        resolve("tiny", ["config.student_train.parallel.overlap_param_gather=true",
                         "config.student_train.optimizer.use_distributed_optimizer=false"])
