"""The memory / throughput options of a recipe's training runs reach the run YAML that `nemo-subnet train` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nemo_subnet.cli import UserError
from nemo_subnet.pipeline.stages import train_run
from nemo_subnet.recipes.cli import resolve
from nemo_subnet.training import TrainConfig


def _run_config(tmp_path: Path, overrides: list[str]) -> TrainConfig:
    config, _ = resolve("tiny", overrides)
    run = train_run(config, config.student_train, tmp_path / "run", tmp_path / "data", {"random": "m.yaml"},
                    tmp_path / "teacher")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return TrainConfig.load(path)


def test_recipe_training_options_reach_the_run(tmp_path):
    train = _run_config(tmp_path, ["config.student_train.recompute=full", "config.student_train.overlap_grad_reduce=true",
                                   "config.student_train.overlap_param_gather=true", "config.distill.fused_output=on"])
    train.validate()
    assert train.parallel.recompute == "full" and train.parallel.overlap_grad_reduce and train.parallel.overlap_param_gather
    assert train.optimizer.use_distributed_optimizer and train.distill.fused_output == "on"
    defaults = _run_config(tmp_path, [])
    assert (defaults.parallel.recompute, defaults.parallel.sequence_parallel, defaults.distill.fused_output) == (
        "none", False, "auto")


def test_param_gather_overlap_without_the_distributed_optimizer_is_refused(tmp_path):
    train = _run_config(tmp_path, ["config.student_train.overlap_param_gather=true",
                                   "config.student_train.distributed_optimizer=false"])
    with pytest.raises(UserError, match="overlap_param_gather needs optimizer.use_distributed_optimizer"):
        train.validate()
