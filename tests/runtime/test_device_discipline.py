"""The CPU backend's device-discipline mode: host/device mistakes a GPU would reject raise on CPU too.

The suite runs in this mode (tests/conftest.py sets NEMO_SUBNET_DEVICE_DISCIPLINE=1 for every process).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from nemo_subnet.runtime import compute_device, cpu_backend
from nemo_subnet.runtime.device_discipline import DeviceDisciplineError, is_host

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the discipline mode is the CPU backend's")


@pytest.fixture()
def device(megatron_runtime):
    assert cpu_backend.discipline_active(), "the suite must run with NEMO_SUBNET_DEVICE_DISCIPLINE=1"
    return compute_device()


def test_placement_follows_a_gpu_process(device):
    on_device, on_host = torch.ones(3, device=device), torch.ones(3)
    assert device == torch.device("cuda", 0) and on_device.device == device and on_host.device.type == "cpu"
    assert not is_host(on_device) and is_host(on_host)
    assert not is_host(on_device + 1) and not is_host(torch.zeros_like(on_device))
    assert not is_host(torch.empty(2, device=on_device.device))  # `device=x.device` follows x
    assert is_host(on_device.cpu()) and not is_host(on_host.cuda()) and not is_host(on_host.to(device))
    assert not is_host(on_device.to(torch.bfloat16)) and is_host(on_host.double())
    assert not is_host(on_device.new_zeros(2)) and is_host(torch.from_numpy(on_host.numpy()))
    module = torch.nn.Linear(3, 3)
    assert is_host(module.weight)
    module.cuda()
    assert not is_host(module.weight) and module.weight.device == device
    module(on_device).sum().backward()
    assert not is_host(module.weight.grad) and module.weight.grad.type() == "torch.cuda.FloatTensor"


def test_mixing_host_and_device_raises_with_the_call_site(device):
    on_device = torch.ones(3, device=device)
    with pytest.raises(DeviceDisciplineError, match=r"mixes a host tensor \(3,\) float32 .*test_device_discipline\.py:\d+"):
        on_device * torch.ones(3)
    with pytest.raises(DeviceDisciplineError, match="host tensor"):
        torch.where(on_device > 0, torch.zeros(3), on_device)
    with pytest.raises(DeviceDisciplineError, match="numpy"):
        on_device.numpy()
    # what a GPU accepts: 0-dim host scalars, explicit transfers, host index tensors
    assert torch.equal((on_device * torch.tensor(2.0)).cpu(), torch.full((3,), 2.0))
    on_device.copy_(torch.arange(3.0))
    assert on_device[torch.tensor([0, 2])].tolist() == [0.0, 2.0]


def test_collective_on_a_host_tensor_raises(device):
    with pytest.raises(DeviceDisciplineError, match=r"all_reduce on a host tensor \(1,\).*NCCL"):
        dist.all_reduce(torch.tensor([1.0]))
    flag = torch.tensor([1.0], device=device)
    dist.all_reduce(flag)
    assert flag.item() == 1.0
    # megatron's metadata groups are gloo on GPU too: host tensors are right there
    gloo = dist.new_group(ranks=[0], backend="gloo")
    dist.all_reduce(torch.tensor([1.0]), group=gloo)
