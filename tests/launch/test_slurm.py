"""The tiny recipe submitted through NeMo-Run's SlurmExecutor to a real SLURM (one node, `.ci/run` starts it).

Skipped, with the reason, where no SLURM controller answers (`launch/local_slurm.sh` makes one as root) —
except under CI (`NEMO_SUBNET_CI_SLURM=1`), where that is a failure. The data stage and the 2-rank (torchrun,
gloo) teacher pretraining run as two dependent sbatch jobs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
sys.path.insert(0, str(Path(__file__).parent))
from recipe_utils import assert_complete, nemo_subnet, run_cli  # noqa: E402
from slurm_utils import require_slurm  # noqa: E402


@pytest.mark.distributed
def test_tiny_recipe_on_real_slurm(tmp_path):
    partition = require_slurm()
    out = tmp_path / "out"
    proc = run_cli(nemo_subnet("run", "--factory", "tiny", "--stage", "data", "--stage", "teacher",
                               f"config.out_dir={out}", "launch.executor=slurm", f"launch.partition={partition}",
                               "launch.nproc_per_node=2", "launch.time=00:20:00"), tmp_path, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert_complete(out, ("data", "teacher"))
    state = json.loads(next((out / "teacher" / "checkpoints").glob("step_*/train_state.json")).read_text())
    assert state["layout"]["world_size"] == 2
    assert (out / "teacher" / "model" / "model.yaml").is_file()
    # the jobs went through sbatch: NeMo-Run kept their sbatch scripts
    scripts = list((tmp_path).rglob("*.sh")) + list(tmp_path.rglob("*sbatch*"))
    assert any("#SBATCH" in p.read_text(errors="ignore") for p in scripts if p.is_file()), scripts
