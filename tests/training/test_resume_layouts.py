"""Resume a KD run at another layout (TP1 -> TP2, PP2 -> PP1, DP2 -> DP1): the loss continues the
uninterrupted run's; at the same layout (DP2 -> DP2) it continues bit-exactly.

Each interrupted run is an uninterrupted run's directory with its newest checkpoint removed — what a kill
right after the step-3 checkpoint leaves — resumed with --resume at the new layout."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from train_helpers import CLI, metrics, run_config, run_train, write_yaml
from torchrun_utils import run_torchrun

from nemo_subnet.training import checkpoint as ckpt

KD = {"alpha_ce": 0.5, "beta_kd": 0.5, "temperature": 2.0}
LAYOUTS = {"tp1": ({"tp": 1, "pp": 1}, 1), "tp2": ({"tp": 2, "pp": 1}, 2), "pp2": ({"tp": 1, "pp": 2}, 2),
           "pp1": ({"tp": 1, "pp": 1}, 1), "dp2": ({"tp": 1, "pp": 1}, 2), "dp1": ({"tp": 1, "pp": 1}, 1)}
KEYS = ("loss", "ce", "kd", "grad_norm")


def _run(root, name, layout, data_dir, student_ckpt, teacher_ckpt, *extra):
    parallel, ranks = LAYOUTS[layout]
    config = write_yaml(root / f"{name}.yaml", run_config(
        root, root / name, data_dir, {"from_checkpoint": str(student_ckpt)},
        schedule={"train_steps": 6, "warmup_steps": 1}, distill={**KD, "teacher": str(teacher_ckpt)},
        parallel=parallel, checkpoint={"every_steps": 3, "keep_last": 2},
        logging={"eval_every": 3, "eval_iters": 2, "progress": False, "tensorboard": False}))
    if ranks == 1:
        run_train(config, *extra)
    else:
        run_torchrun(str(CLI), ranks, "train", "--config", str(config), *extra, env={"PYTHONWARNINGS": "ignore"})
    return root / name


def _interrupted_copy(run_dir, dest):
    """The run as a kill right after its step-3 checkpoint leaves it."""
    shutil.copytree(run_dir, dest)
    shutil.rmtree(ckpt.step_dir(dest, 6))
    return dest


def _curve(run_dir, kind="train"):
    keys = KEYS if kind == "train" else ("valid_loss",)
    return torch.tensor([[r[k] for k in keys] for r in metrics(run_dir, kind)], dtype=torch.float64)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir, student_ckpt, teacher_ckpt):
    root = tmp_path_factory.mktemp("uninterrupted")
    return {layout: _run(root, layout, layout, data_dir, student_ckpt, teacher_ckpt) for layout in ("tp1", "dp2", "pp2")}


@pytest.mark.distributed
@pytest.mark.parametrize("before,after", [("tp1", "tp2"), ("pp2", "pp1"), ("dp2", "dp1"), ("dp2", "dp2")])
def test_resume_across_layouts_with_kd(tmp_path, data_dir, student_ckpt, teacher_ckpt, uninterrupted, before, after):
    _interrupted_copy(uninterrupted[before], tmp_path / "run")
    resumed = _run(tmp_path, "run", after, data_dir, student_ckpt, teacher_ckpt, "--resume")
    records = metrics(resumed)
    assert [r["step"] for r in records] == list(range(1, 7))
    reference = uninterrupted["tp1"]
    if before == after:  # same layout: nothing may change, not even the last bit
        reference = uninterrupted[before]
        for key in (*KEYS, "lr"):
            assert [r[key] for r in records] == [r[key] for r in metrics(reference)], key
        assert _curve(resumed, "valid").tolist() == _curve(reference, "valid").tolist()
        return
    # another layout: the same function up to reduction order (as the layouts' own runs are)
    torch.testing.assert_close(_curve(resumed)[3:], _curve(reference)[3:], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(_curve(resumed, "valid"), _curve(reference, "valid"), rtol=2e-5, atol=2e-5)
    parallel, ranks = LAYOUTS[after]
    state = json.loads((ckpt.step_dir(resumed, 6) / "train_state.json").read_text())
    assert state["layout"] == {"tp": parallel["tp"], "pp": parallel["pp"],
                               "dp": ranks // (parallel["tp"] * parallel["pp"]), "world_size": ranks}
