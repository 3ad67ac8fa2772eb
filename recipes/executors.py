"""Where the stages run: NeMo-Run executors from one small ``LaunchConfig`` (overridable field by field).

- ``local``: this machine; multi-rank stages under torchrun (``LocalExecutor(launcher="torchrun")``).
- ``slurm``: ``SlurmExecutor`` (nodes, GPUs per node, partition, account, time, optional container);
  multi-rank stages under torchrun with SLURM-derived rendezvous. Submitted from a login node through a
  ``LocalTunnel`` (default) or from elsewhere through an ``SSHTunnel`` (``ssh_host``).

Stages that are single-process by nature (data, importance, search, extract, export, report) get a
one-task executor; training stages get ``nodes x nproc_per_node`` ranks.

Two NeMo-Run traps handled here (see DESIGN.md): the default packager is a git archive (fails outside a
git work tree and drops uncommitted files), so we run from the working tree with ``run.Packager()``;
and a LocalTunnel's ``job_dir`` must be NeMo-Run's experiments folder or sbatch looks for a script that
was never copied there.
"""


import getpass
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nemo_run as run


@dataclass
class LaunchConfig:
    executor: Literal["local", "slurm"] = "local"
    nodes: int = 1
    """Nodes for training stages (single-process stages always take one)."""
    nproc_per_node: int = 1
    """Ranks per node for training stages: GPUs per node on a GPU cluster, CPU processes (gloo) elsewhere."""
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    container_image: str | None = None
    """Optional container (pyxis/enroot ``--container-image``) with this project installed."""
    container_mounts: list[str] = field(default_factory=list)
    ssh_host: str | None = None
    """Submit through SSH to this login node (None: this machine is a SLURM login node)."""
    ssh_user: str | None = None
    remote_job_dir: str | None = None
    """Job directory on the cluster when submitting over SSH."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables of every task."""


def task_env(launch: LaunchConfig, ranks_per_node: int) -> dict[str, str]:
    """Environment of a task: this interpreter first on PATH (NeMo-Run launches ``python``), one OpenMP thread
    per rank when several CPU ranks share a node."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    if launch.gpus_per_node == 0 and ranks_per_node > 1:
        env["OMP_NUM_THREADS"] = "1"
    return {**env, **launch.env}


def local_executor(launch: LaunchConfig, *, distributed: bool) -> run.LocalExecutor:
    ranks = launch.nproc_per_node if distributed else 1
    return run.LocalExecutor(ntasks_per_node=ranks, launcher="torchrun" if ranks > 1 else None,
                             env_vars=task_env(launch, ranks))


def slurm_reachable() -> str | None:
    """None when a SLURM controller answers here, else why not (for a clear error / test skip)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client commands (sinfo, sbatch) are not installed on this machine"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: the SLURM controller does not answer"
    if proc.returncode != 0:
        return f"sinfo failed: {(proc.stderr or proc.stdout).strip() or proc.returncode}"
    if not proc.stdout.strip():
        return "sinfo lists no partitions"
    return None


def slurm_executor(launch: LaunchConfig, *, distributed: bool) -> run.SlurmExecutor:
    nodes = launch.nodes if distributed else 1
    ranks = launch.nproc_per_node if distributed else 1
    if launch.ssh_host:
        tunnel = run.SSHTunnel(host=launch.ssh_host, user=launch.ssh_user or os.environ.get("USER", ""),
                               job_dir=launch.remote_job_dir or "~/.nemo_run/experiments")
    else:
        from nemo_run.config import get_nemorun_home

        tunnel = run.LocalTunnel(job_dir=os.path.join(get_nemorun_home(), "experiments"))
    # NeMo-Run needs an account to name jobs; clusters without accounting accept any, so fall back to the user
    account = launch.account or os.environ.get("SLURM_ACCOUNT") or getpass.getuser()
    kwargs = dict(account=account, partition=launch.partition, nodes=nodes, ntasks_per_node=ranks,
                  time=launch.time, packager=run.Packager(), tunnel=tunnel, env_vars=task_env(launch, ranks),
                  launcher="torchrun" if nodes * ranks > 1 else None)
    if launch.gpus_per_node and distributed:
        # one task per node; torchrun starts one rank per GPU
        kwargs.update(ntasks_per_node=1, gpus_per_node=launch.gpus_per_node, launcher="torchrun")
    if launch.container_image:
        kwargs.update(container_image=launch.container_image, container_mounts=launch.container_mounts)
    return run.SlurmExecutor(**kwargs)


def make_executor(launch: LaunchConfig, *, distributed: bool) -> run.Executor:
    from nemo_subnet.cli import UserError

    if launch.executor == "local":
        return local_executor(launch, distributed=distributed)
    if launch.executor == "slurm":
        return slurm_executor(launch, distributed=distributed)
    raise UserError(f"unknown executor {launch.executor!r}; choose local or slurm")
