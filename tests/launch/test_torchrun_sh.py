"""launch/torchrun.sh: local rendezvous for N ranks, host-list rendezvous, and SLURM-derived rendezvous."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "launch" / "torchrun.sh"
PROBE = "import os; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'], flush=True)"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MASTER_PORT": str(29000 + os.getpid() % 1000), **(env or {})}
    if "SLURM_JOB_ID" not in (env or {}):  # not inside an allocation unless the test says so
        full.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120,
                          cwd=REPO)


def test_single_node_two_ranks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    proc = _run("--nproc", "2", "--", "python", str(probe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 of 2 127.0.0.1", "rank 1 of 2 127.0.0.1"]


def test_host_list_single_host_uses_c10d(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    proc = _run("--nproc", "2", "--hosts", "127.0.0.1", "--node-rank", "0", "--", "python", str(probe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(line.startswith("rank") for line in proc.stdout.splitlines()) == 2


def test_no_command_is_an_error():
    proc = _run("--nproc", "2")
    assert proc.returncode == 2 and "no command given" in proc.stderr
