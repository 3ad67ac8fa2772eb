import os
import sys
from pathlib import Path

import pytest

# tests import their helpers (torchrun_utils) by module name
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def megatron_runtime():
    """Single-process Megatron runtime (gloo, TP=1, PP=1) shared by in-process tests."""
    from nemo_subnet.runtime import init_runtime

    return init_runtime(tp=1, pp=1, seed=1234)
