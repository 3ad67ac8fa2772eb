import os
import sys
from pathlib import Path

import pytest

# tests import their helpers (torchrun_utils) by module name
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Every test process (and every torchrun / subprocess it starts, through the environment) runs the CPU
# backend in device-discipline mode: host/device mistakes that only a GPU would catch raise here too.
os.environ.setdefault("NEMO_SUBNET_DEVICE_DISCIPLINE", "1")
# Triton picks interpret mode when it is first imported (megatron-core imports it): without CUDA, the
# Triton kernels can only run under the interpreter, so choose it before anything imports triton.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def megatron_runtime():
    """Single-process Megatron runtime (gloo, TP=1, PP=1) shared by in-process tests."""
    from nemo_subnet.runtime import init_runtime

    return init_runtime(tp=1, pp=1, seed=1234)
