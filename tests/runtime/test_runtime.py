"""CPU backend (active only without CUDA) and launcher detection."""

import subprocess
import sys

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
