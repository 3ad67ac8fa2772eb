"""The defect the device-discipline mode was made for, re-planted: a host tensor in the preemption flag's
all-reduce, which on a GPU fails every training run at the end of step 1 (NCCL takes CUDA tensors only).
In the mode the whole suite runs in, the same CPU run must stop with the call site; the fixed code runs."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from train_helpers import run_config, write_yaml

from nemo_subnet.runtime.device_discipline import DeviceDisciplineError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the discipline mode is the CPU backend's")


def _config(root, data_dir, model_yaml):
    from nemo_subnet.training.config import TrainConfig

    run = run_config(root, root / "run", data_dir, {"random": str(model_yaml)},
                     schedule={"train_steps": 2, "warmup_steps": 1}, checkpoint={"every_steps": 0},
                     logging={"eval_every": 0, "eval_iters": 2, "progress": False, "tensorboard": False})
    return TrainConfig.load(write_yaml(root / "run.yaml", run), [])


def test_planted_preemption_flag_defect_is_caught(tmp_path, monkeypatch, data_dir, model_yaml, megatron_runtime):
    from nemo_subnet.training import loop

    def agreed_with_host_flag(self) -> bool:  # the code before the fix, verbatim
        flag = torch.tensor([1.0 if self.requested else 0.0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    monkeypatch.setattr(loop._Preemption, "agreed", agreed_with_host_flag)
    (tmp_path / "planted").mkdir()
    with pytest.raises(DeviceDisciplineError,
                       match=r"all_reduce on a host tensor \(1,\) float32 at .*test_device_discipline_training\.py:\d+ "
                             r"\(agreed_with_host_flag\)"):
        loop.train(_config(tmp_path / "planted", data_dir, model_yaml))
    monkeypatch.undo()
    (tmp_path / "fixed").mkdir()
    result = loop.train(_config(tmp_path / "fixed", data_dir, model_yaml))
    assert result.step == 2 and result.status == "completed"
