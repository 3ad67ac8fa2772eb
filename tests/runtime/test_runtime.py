"""CPU backend (active only without CUDA) and launcher detection."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_subnet.runtime import cpu_backend
from nemo_subnet.runtime.distributed import _first_slurm_host, detect_launch_env


def _storage_device(t: torch.Tensor) -> str:
    return t.untyped_storage().device.type


def test_cpu_backend_redirects_cuda_placement(megatron_runtime):
    assert cpu_backend.is_active() and cpu_backend.install()  # idempotent
    assert _storage_device(torch.zeros(2, device="cuda")) == "cpu"
    assert _storage_device(torch.empty(2, device=torch.cuda.current_device())) == "cpu"
    assert _storage_device(torch.ones(2, device=torch.device("cuda", 0))) == "cpu"
    t = torch.arange(3.0, device=cpu_backend.compute_device())
    assert not t.cuda().is_cuda and _storage_device(t.to("cuda")) == "cpu"
    assert t.type() == "torch.cuda.FloatTensor" and t.type(torch.float64).dtype == torch.float64
    torch.cuda.synchronize()  # a no-op instead of an error


class _AllocatesInBackward(torch.autograd.Function):
    """As megatron's sequence-parallel linear layers do: a buffer on the current GPU, made in backward."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        buffer = torch.empty(grad.shape, dtype=grad.dtype, device=torch.cuda.current_device())
        return buffer.copy_(grad) * 2


def test_cpu_backend_redirects_placement_in_custom_backward(megatron_runtime):
    # autograd runs a custom Function's backward with an empty torch-function mode stack
    x = torch.ones(3, device=cpu_backend.compute_device(), requires_grad=True)
    _AllocatesInBackward.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_cpu_backend_rng_streams_are_megatron_seeded(megatron_runtime):
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    assert isinstance(tracker, cpu_backend.CpuRNGStatesTracker)
    states = tracker.get_states()
    outside = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside), "fork must restore the default stream"
    tracker.set_states(states)
    with tracker.fork():
        again = torch.rand(3)
    assert torch.equal(first, again)


def test_cpu_backend_stays_off_when_cuda_is_present():
    code = ("import torch\ntorch.cuda.is_available = lambda: True\n"
            "from nemo_subnet.runtime import cpu_backend\n"
            "assert cpu_backend.install() is False and not cpu_backend.is_active()\n"
            "from torch.overrides import _get_current_function_mode_stack\n"
            "assert not _get_current_function_mode_stack()\nprint('inactive')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "inactive" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("environ,expected", [
    ({}, ("single", 0, 1, "127.0.0.1")),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "1234"},
     ("torchrun", 3, 4, "10.0.0.2")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "77", "MASTER_ADDR": "gpu01"},
     ("slurm", 5, 8, "gpu01")),
])
def test_launcher_detection(environ, expected):
    env = detect_launch_env(environ)
    assert (env.launcher, env.rank, env.world_size, env.master_addr) == expected


def test_slurm_port_is_shared_by_every_task_and_host_parsed_without_scontrol(monkeypatch):
    base = {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[07-09,12]"}
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: fall back to parsing the node list
    ports = {detect_launch_env({**base, "SLURM_PROCID": str(r)}).master_port for r in range(4)}
    assert len(ports) == 1
    assert detect_launch_env({**base, "SLURM_PROCID": "0"}).master_addr == "node07"
    assert _first_slurm_host("single-node") == "single-node"


@pytest.mark.distributed
def test_rng_streams_per_pipeline_stage_and_tensor_rank(tmp_path):
    """TP2 x PP2: each pipeline stage seeds its own streams (before: every stage replayed stage 0's, so its
    layers drew the same init and dropout masks), TP ranks of a stage share the default stream (the init
    draws weights whole) and differ in megatron's model-parallel stream; a random init does not depend on TP."""
    from torchrun_utils import run_torchrun

    worker = str(Path(__file__).parent / "rng_worker.py")
    run_torchrun(worker, 4, "--tp", "2", "--pp", "2", "--out", str(tmp_path), timeout=300)
    ranks = {(r["pp"], r["tp"]): r for r in (torch.load(p) for p in sorted(tmp_path.glob("rank_*.pt")))}
    assert sorted(ranks) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {k: r["initial_seed"] for k, r in ranks.items()} == {(0, 0): 1234, (0, 1): 1234, (1, 0): 1334, (1, 1): 1334}
    for stage in (0, 1):
        assert torch.equal(ranks[stage, 0]["default"], ranks[stage, 1]["default"])
        assert not torch.equal(ranks[stage, 0]["tracker"], ranks[stage, 1]["tracker"])
    for tp in (0, 1):
        assert not torch.equal(ranks[0, tp]["default"], ranks[1, tp]["default"])
        assert not torch.equal(ranks[0, tp]["tracker"], ranks[1, tp]["tracker"])
    # the first layer of each stage (layers 0 and 2): different draws; the two TP halves of one weight differ
    assert not torch.equal(ranks[0, 0]["fc1"], ranks[1, 0]["fc1"])
    assert not torch.equal(ranks[0, 0]["fc1"], ranks[0, 1]["fc1"])
    (tmp_path / "tp1").mkdir()
    run_torchrun(worker, 2, "--tp", "1", "--pp", "2", "--out", str(tmp_path / "tp1"), timeout=300)
    tp1 = {r["pp"]: r for r in (torch.load(p) for p in (tmp_path / "tp1").glob("rank_*.pt"))}
    for stage in (0, 1):  # the TP=2 shards of a stage are the TP=1 weight, split
        torch.testing.assert_close(torch.cat([ranks[stage, 0]["fc1"], ranks[stage, 1]["fc1"]]), tp1[stage]["fc1"],
                                   rtol=0, atol=0)


def test_random_init_is_drawn_on_the_host_also_on_gpu(monkeypatch):
    """A random init is drawn whole on the host (TP- and device-independent) even when CUDA is present; a
    model built to receive a checkpoint allocates on the device (before: device init on GPU, per-TP-rank)."""
    from nemo_subnet.models.config import ModelConfig, initialize_on_host, to_transformer_config

    assert initialize_on_host(True, on_gpu=True) and initialize_on_host(False, on_gpu=False)
    assert not initialize_on_host(False, on_gpu=True)
    from rng_worker import TINY

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = ModelConfig(**TINY)
    assert to_transformer_config(cfg, perform_initialization=True).use_cpu_initialization
    assert not to_transformer_config(cfg, perform_initialization=False).use_cpu_initialization


@pytest.mark.parametrize("local_rank,visible,index", [
    (0, 8, 0), (5, 8, 5),  # torchrun, or srun without binding: every rank sees the node's GPUs
    (5, 1, 0), (0, 1, 0),  # srun --gpus-per-task=1: SLURM_LOCALID 5, one GPU visible (before: an error)
])
def test_device_index_of_a_rank(local_rank, visible, index):
    from nemo_subnet.runtime.gpu_request import local_device_index

    assert local_device_index(local_rank, visible) == index


def test_more_ranks_than_gpus_is_one_clear_error():
    from nemo_subnet.cli import UserError
    from nemo_subnet.runtime.gpu_request import local_device_index

    with pytest.raises(UserError, match="local rank 4 but only 2 GPU"):
        local_device_index(4, 2)


def test_two_ranks_on_one_gpu_are_refused():
    from nemo_subnet.cli import UserError
    from nemo_subnet.runtime.gpu_request import check_distinct_gpus

    check_distinct_gpus([("node1", "GPU-a"), ("node1", "GPU-b"), ("node2", "GPU-a")])  # same UUID, other host: fine
    with pytest.raises(UserError, match="ranks 0 and 2 both run on GPU GPU-a of host node1"):
        check_distinct_gpus([("node1", "GPU-a"), ("node1", "GPU-b"), ("node1", "GPU-a")])
