"""A two-node SLURM job on this machine (launch/local_slurm.sh: partition "two", two slurmd): ``sbatch --nodes=2``
+ ``srun --ntasks-per-node=1 launch/torchrun.sh`` takes torchrun.sh's SLURM branch on each node (node rank from
SLURM_NODEID, master = the first node's NodeAddr, rendezvous id = job.step) and runs a 2-node gloo job.

Skipped, with the reason, where no such SLURM answers, except under CI (``NEMO_SUBNET_CI_SLURM=1``): a failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from slurm_utils import job_field, node_addr, require_two_nodes, wait_for  # noqa: E402
from two_nodes import PROBE, TORCHRUN_SH, probe_lines  # noqa: E402

SCRIPT = """#!/bin/bash
#SBATCH --partition={partition}
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:10:00
#SBATCH --output={out}
echo "job $SLURM_JOB_ID nodes $SLURM_JOB_NODELIST"
export PATH={bin}:$PATH MASTER_PORT={port} OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
srun --ntasks-per-node=1 bash -c 'echo "task node_id=$SLURM_NODEID node=$SLURMD_NODENAME"; \\
  exec bash {torchrun} -- python {probe}'
"""


@pytest.mark.distributed
def test_sbatch_two_nodes_torchrun_slurm_branch(tmp_path):
    partition = require_two_nodes()
    out = tmp_path / "job.out"
    script = tmp_path / "job.sbatch"
    script.write_text(SCRIPT.format(partition=partition, out=out, bin=Path(sys.executable).parent,
                                    port=32000 + int(tmp_path.stat().st_ino) % 1000, torchrun=TORCHRUN_SH, probe=PROBE))
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    try:  # (sbatch --wait polls every 10-30 s; this every 0.5 s)
        state = wait_for(lambda: (job_field(job, "JobState") or "GONE") not in ("PENDING", "RUNNING", "CONFIGURING",
                                                                                "COMPLETING") and job_field(job, "JobState"),
                         "the two-node job to end", 420)
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    text = out.read_text(errors="replace") if out.exists() else ""
    print(text)
    assert state == "COMPLETED", f"job {job} {state}\n{text[-4000:]}"
    nodes = subprocess.run(["scontrol", "show", "hostnames", text.split("nodes ", 1)[1].split()[0]],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(nodes) == 2
    tasks = sorted(line.split()[1:] for line in text.splitlines() if line.startswith("task "))
    assert tasks == [["node_id=0", f"node={nodes[0]}"], ["node_id=1", f"node={nodes[1]}"]]
    ranks = sorted(probe_lines(text), key=lambda r: r["rank"])
    assert [(r["rank"], r["node_rank"], r["nnodes"], r["world_size"]) for r in ranks] == [(0, 0, 2, 2), (1, 1, 2, 2)]
    assert {r["master"] for r in ranks} == {node_addr(nodes[0])}  # the first node of the list
    assert {r["run_id"] for r in ranks} == {f"{job}.0"}  # SLURM job.step
    assert {float(r["allreduce"]) for r in ranks} == {3.0}
