"""A step whose gradients are not finite is skipped (no update), logged and counted; the run goes on, and
stops with one clear error only after more than optimizer.max_skipped_steps in a row."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from train_helpers import metrics, run_config, write_yaml

from nemo_subnet.training import checkpoint as ckpt


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite); NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _poison_steps(monkeypatch, steps: set[int], micro_batches: int):
    """Make the gradients of the given (1-based) training steps NaN through the student's output (logits)."""
    from nemo_subnet.training import loop

    calls = {"train": 0}
    real_loss = loop.lm_loss

    def lm_loss(student, *args, **kwargs):
        if torch.is_grad_enabled():
            step = calls["train"] // micro_batches + 1
            calls["train"] += 1
            if step in steps:
                student = dataclasses.replace(student, tensor=_NaNGradient.apply(student.tensor))
        return real_loss(student, *args, **kwargs)

    monkeypatch.setattr(loop, "lm_loss", lm_loss)


def _config(root, data_dir, model_yaml, max_skipped: int, steps: int = 6):
    from nemo_subnet.training.config import TrainConfig

    run = run_config(root, root / "run", data_dir, {"random": str(model_yaml)},
                     optimizer={"max_skipped_steps": max_skipped}, schedule={"train_steps": steps, "warmup_steps": 1},
                     checkpoint={"every_steps": 1, "keep_last": 10},
                     logging={"eval_every": 0, "eval_iters": 2, "progress": False, "tensorboard": False})
    return TrainConfig.load(write_yaml(root / "run.yaml", run), [])


def _weights(step_dir):
    from nemo_subnet.checkpointing import load_model

    _, model = load_model(step_dir)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v is not None and torch.is_tensor(v)}


def test_nonfinite_gradient_step_is_skipped_and_counted(tmp_path, monkeypatch, data_dir, model_yaml, megatron_runtime):
    from nemo_subnet.training import loop

    _poison_steps(monkeypatch, {3}, micro_batches=2)
    result = loop.train(_config(tmp_path, data_dir, model_yaml, max_skipped=1))
    assert result.status == "completed" and result.step == 6
    records = metrics(tmp_path / "run")
    assert [r["skipped"] for r in records] == [False, False, True, False, False, False]
    assert records[-1]["skipped_steps"] == 1 and records[2]["grad_norm"] is None
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    # the skipped step left weights and LR schedule untouched: its checkpoint holds step 2's weights
    run = tmp_path / "run"
    before, skipped = _weights(ckpt.step_dir(run, 2)), _weights(ckpt.step_dir(run, 3))
    for name, value in before.items():
        torch.testing.assert_close(skipped[name], value, rtol=0, atol=0, msg=name)
    # ... and the LR schedule: step 3 ran at step 2's LR, step 4 at the LR step 3 would have had
    assert records[2]["lr"] == records[1]["lr"] and records[3]["lr"] < records[2]["lr"]


def test_too_many_skipped_steps_in_a_row_stop_with_one_error(tmp_path, monkeypatch, data_dir, model_yaml,
                                                              megatron_runtime):
    from nemo_subnet.training import loop

    _poison_steps(monkeypatch, {2, 3, 4}, micro_batches=2)
    with pytest.raises(loop.TrainingError, match=r"non-finite loss or gradients at step 2 and the 2 steps after it .*"
                                                 r"optimizer.max_skipped_steps=2"):
        loop.train(_config(tmp_path, data_dir, model_yaml, max_skipped=2))
