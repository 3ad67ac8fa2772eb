"""The plain sbatch templates launch each stage as the one kind -> ranks mapping says (pipeline/kinds.py, the
mapping NeMo-Run's executors use): run here with a stand-in ``srun`` that records its command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_subnet.pipeline.kinds import stage_resources
from nemo_subnet.pipeline.stages import build_stages
from nemo_subnet.recipes.presets import PRESETS

REPO = Path(__file__).parents[2]
FAKE_SRUN = """#!/usr/bin/env bash
echo "REQUIRE_CUDA=${NEMO_SUBNET_REQUIRE_CUDA:-} $*" >> "$SRUN_LOG"
"""


@pytest.fixture
def allocation(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    config = tmp_path / "pipeline.yaml"
    PRESETS["tiny"]().save(config)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "1", "SRUN_LOG": str(tmp_path / "srun.log")}
    return config, env, tmp_path / "srun.log"


@pytest.mark.parametrize("stage", ["importance", "extract", "distill"])
def test_stage_sbatch_launches_by_the_kind_mapping(stage, allocation):
    config, env, log = allocation
    proc = subprocess.run(["bash", str(REPO / "launch/sbatch/stage.sbatch"), str(config), stage], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cuda, *args = log.read_text().strip().split(" ")
    res = stage_resources(build_stages()[stage].kind_of(PRESETS["tiny"]()), nodes=2, gpus_per_node=8)
    assert cuda == f"REQUIRE_CUDA={res.gpus_per_node or ''}"
    pipeline = ["python", "-m", "nemo_subnet.pipeline", "--config", str(config), "--stage", stage]
    if res.nodes * res.ranks_per_node > 1:
        assert args == [f"--nodes={res.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                        str(REPO / "launch/torchrun.sh"), "--nproc", str(res.ranks_per_node), "--", *pipeline]
    else:
        assert args == ["--nodes=1", "--ntasks=1", *pipeline]
    # the mapping itself: importance on one node's 8 GPUs, extract on one, distill on all 16
    assert (res.nodes, res.ranks_per_node, res.gpus_per_node) == {
        "importance": (1, 8, 8), "extract": (1, 1, 1), "distill": (2, 8, 8)}[stage]


def test_stage_sbatch_stops_on_a_bad_config(allocation):
    config, env, log = allocation
    proc = subprocess.run(["bash", str(REPO / "launch/sbatch/stage.sbatch"), str(config), "data",
                           "search.strategy=annealing"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2 and "search.strategy: 'annealing' is not allowed" in proc.stderr
    assert not log.exists()  # nothing launched
