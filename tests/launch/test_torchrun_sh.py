"""launch/torchrun.sh: local rendezvous for N ranks, host-list rendezvous, SLURM-derived rendezvous, and one rank per
GPU *given* to the process (CUDA_VISIBLE_DEVICES, SLURM_GPUS_ON_NODE, nvidia-smi, 1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "launch" / "torchrun.sh"
# one write(2) per rank: print() with PYTHONUNBUFFERED (CI sets it) writes each argument apart, and two ranks'
# pieces interleave on the shared pipe ("rankrank  0 of 2 ...")
PROBE = ("import os; e = os.environ; "
         "os.write(1, f\"rank {e['RANK']} of {e['WORLD_SIZE']} {e['MASTER_ADDR']}\\n\".encode())")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MASTER_PORT": str(29000 + os.getpid() % 1000), **(env or {})}
    if "SLURM_JOB_ID" not in (env or {}):  # not inside an allocation unless the test says so
        full.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=300,
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


def _nproc(env: dict, tmp_path: Path, gpus_on_node: int | None = None) -> str:
    """torchrun.sh's --nproc-per-node for this environment (PYTHON=echo prints the torchrun command instead of
    running it; a fake nvidia-smi on PATH stands for a node with ``gpus_on_node`` GPUs, or none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.unlink(missing_ok=True)
    if gpus_on_node is not None:
        smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i})'\n"
                                               for i in range(gpus_on_node)))
        smi.chmod(0o755)
    for tool in ("awk", "grep", "head", "sed", "wc", "echo"):  # only these on PATH: no real nvidia-smi
        link = bin_dir / tool
        if not link.exists():
            link.symlink_to(shutil.which(tool))
    full = {"PATH": str(bin_dir), "PYTHON": "echo", "HOME": str(tmp_path), **env}
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT), "--", "python", "x.py"], capture_output=True, text=True,
                          env=full, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return next(arg for arg in proc.stdout.split() if arg.startswith("--nproc-per-node=")).split("=")[1]


def test_nproc_counts_the_gpus_given_not_the_gpus_of_the_node(tmp_path):
    """On a shared 8-GPU node a job given 2 GPUs runs 2 ranks, not 8 (two per GPU, hidden by local_rank % count)."""
    assert _nproc({"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path, gpus_on_node=8) == "2"
    assert _nproc({"CUDA_VISIBLE_DEVICES": "GPU-5f1e,GPU-77aa,GPU-0c2b"}, tmp_path, gpus_on_node=8) == "3"
    assert _nproc({"SLURM_GPUS_ON_NODE": "4"}, tmp_path, gpus_on_node=8) == "4"
    assert _nproc({"SLURM_GPUS_ON_NODE": "gpu:4"}, tmp_path, gpus_on_node=8) == "4"
    # CUDA_VISIBLE_DEVICES wins over SLURM's count (it is what the process can actually open)
    assert _nproc({"CUDA_VISIBLE_DEVICES": "3", "SLURM_GPUS_ON_NODE": "4"}, tmp_path, gpus_on_node=8) == "1"
    assert _nproc({}, tmp_path, gpus_on_node=8) == "8"  # nothing allocated: the node's GPUs
    assert _nproc({}, tmp_path) == "1"  # no GPU at all: one CPU rank
    for hidden in ("", "-1", "NoDevFiles"):  # GPUs hidden from the process: CPU, one rank
        assert _nproc({"CUDA_VISIBLE_DEVICES": hidden}, tmp_path, gpus_on_node=8) == "1"
    assert _nproc({"NPROC": "6", "CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path) == "6"  # an explicit choice wins


def test_nproc_garbage_gpu_count_is_an_error(tmp_path):
    full = {"PATH": f"/usr/bin{os.pathsep}/bin", "PYTHON": "echo", "SLURM_GPUS_ON_NODE": "lots"}
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT), "--", "python", "x.py"], capture_output=True,
                          text=True, env=full, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and "cannot count the GPUs given to this process (got 'lots')" in proc.stderr
