"""Where the stages run: NeMo-Run executors from one small ``LaunchConfig`` (overridable field by field).

- ``local``: this machine; multi-rank stages under torchrun (``LocalExecutor(launcher="torchrun")``).
- ``slurm``: ``SlurmExecutor`` (nodes, GPUs per node, partition, account, time, CPUs per rank, memory, whole
  nodes for GPU jobs, optional container);
  multi-rank stages under torchrun with SLURM-derived rendezvous. Submitted from a login node through a
  ``LocalTunnel`` (default) or from elsewhere through an ``SSHTunnel`` (``ssh_host``).

Each stage's kind decides its resources through the one mapping of ``nemo_subnet.pipeline.kinds`` (the plain
sbatch templates use it too): ``host`` (data, report) one process, no GPU; ``single`` (extract, export, the HF
teacher import) one process on one GPU; ``evaluate`` (importance, search) ``eval_ranks`` ranks on one node;
``train`` ``nodes`` x (one rank per GPU, or ``nproc_per_node`` CPU ranks). A task that was given GPUs carries
``NEMO_SUBNET_REQUIRE_CUDA`` and fails with one line when CUDA is not visible
(``nemo_subnet.runtime.gpu_request``) instead of running on CPU.

SLURM jobs are requeueable and get a warning before their time limit (``slurm_signals.py``): the ranks receive
SIGTERM, checkpoint and exit 75, and a resumable stage requeues itself and continues from that checkpoint.

Two NeMo-Run traps handled here (see DESIGN.md): the default packager is a git archive (fails outside a
git work tree and drops uncommitted files), so we run from the working tree with ``run.Packager()``;
and a LocalTunnel's ``job_dir`` must be NeMo-Run's experiments folder or sbatch looks for a script that
was never copied there.
"""


import getpass
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import nemo_run as run

from nemo_subnet.config import NonNegativeInt, PositiveInt
from nemo_subnet.pipeline import kinds
from nemo_subnet.pipeline.kinds import StageResources
from nemo_subnet.recipes.slurm_signals import signal_setup_lines

_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")
"""``--mem``: a whole number with an optional unit (SLURM reads it per node)."""
REQUIRE_CUDA_VAR = "NEMO_SUBNET_REQUIRE_CUDA"
"""= ``nemo_subnet.runtime.gpu_request.REQUIRE_CUDA_VAR`` (spelled out: importing the runtime loads megatron)."""


@dataclass
class LaunchConfig:
    executor: Literal["local", "slurm"] = "local"
    nodes: PositiveInt = 1
    """Nodes of the training stages (every other stage runs on one node)."""
    nproc_per_node: PositiveInt = 1
    """CPU ranks (gloo) per node of the training stages when ``gpus_per_node`` is 0. With GPUs every training
    stage runs one rank per GPU; leave this at 1 (or equal to ``gpus_per_node``)."""
    gpus_per_node: NonNegativeInt = 0
    """GPUs per node. 0: no stage asks for a GPU (CPU, gloo). > 0: every stage that computes gets GPUs —
    training stages all of them on ``nodes`` nodes, importance and search ``eval_ranks`` on one node,
    extract / export / the HF teacher import one — and fails with one line if CUDA is not visible;
    data and report get none."""
    eval_ranks: PositiveInt | None = None
    """Ranks (one per GPU, one node) of importance and search: ``search.tp`` x ``search.pp`` per teacher
    replica, data parallel over the evaluation batches across the rest. None: every GPU of a node
    (``gpus_per_node``); 1 on CPU."""
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    """SLURM time limit of each stage's job. A resumable stage (training, search) that reaches it checkpoints
    and requeues itself (see ``signal_grace_s``), so it may be shorter than the stage."""
    signal_grace_s: PositiveInt = 120
    """SLURM: seconds before the time limit at which the job is warned (``--signal=B:USR1@N``): the ranks get
    SIGTERM, finish their current step, save a checkpoint and exit; then the job requeues itself. It must cover
    one training step plus one checkpoint save (a 1B student with its optimizer state writes ~16 GB). Also
    torchrun's wait for its workers to exit after SIGTERM (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``; 30 s by default)."""
    exclusive: bool = True
    """SLURM ``--exclusive`` on every job that requests GPUs: the job owns its nodes, so no other job's ranks, data
    loaders or NCCL proxy threads share their CPUs, memory or NICs. False: share nodes (then size ``mem`` and
    ``cpus_per_rank`` to this job's part of a node). Jobs without GPUs (data, report) never ask for it."""
    mem: str | None = "0"
    """SLURM ``--mem`` (per node) of every job that requests GPUs: ``"0"`` is all of the node's memory (SLURM's
    convention), e.g. ``"480G"`` a fixed amount. None: the partition's default, often a few GB per allocated CPU,
    with which 8 ranks loading an 8B checkpoint on the host can be OOM-killed. Jobs without GPUs keep the default."""
    cpus_per_rank: PositiveInt | None = None
    """CPU cores per rank (its data loader, NCCL proxy threads, host-side checkpoint (de)serialization): SLURM
    ``--cpus-per-task`` = this x the ranks of the task (one torchrun task runs every rank of a node). None: 8 per
    rank of a GPU stage (fits 8-GPU nodes of 64+ cores), 1 per rank of a CPU stage (its ranks run one thread).
    Without it SLURM gives a task one CPU, and every rank of a node would share it."""
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

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.gpus_per_node and self.nproc_per_node not in (1, self.gpus_per_node):
            yield "nproc_per_node", (f"{self.nproc_per_node} with gpus_per_node={self.gpus_per_node}: GPU stages run "
                                     "one rank per GPU; leave nproc_per_node at 1")
        if self.eval_ranks is not None and self.gpus_per_node and self.eval_ranks > self.gpus_per_node:
            yield "eval_ranks", (f"{self.eval_ranks}: must be between 1 and gpus_per_node={self.gpus_per_node} "
                                 "(importance and search run on one node)")
        if self.mem is not None and not _SLURM_MEM.match(self.mem):
            yield "mem", (f"{self.mem!r}: expected SLURM's --mem form, a number with an optional K, M, G or T suffix "
                          "(\"0\": all of the node's memory), or null for the partition's default")


def eval_ranks(launch: LaunchConfig) -> int:
    return kinds.eval_ranks(launch.gpus_per_node, launch.eval_ranks)


def stage_resources(launch: LaunchConfig, kind: str) -> StageResources:
    """Nodes, ranks and GPUs of a stage of this kind on this launch (pipeline/kinds.py)."""
    return kinds.stage_resources(kind, nodes=launch.nodes, gpus_per_node=launch.gpus_per_node,
                                 nproc_per_node=launch.nproc_per_node, requested_eval_ranks=launch.eval_ranks)


def task_env(launch: LaunchConfig, res: StageResources) -> dict[str, str]:
    """Environment of a task: this interpreter first on PATH (NeMo-Run launches ``python``), one OpenMP thread
    per rank when several CPU ranks share a node, the GPU requirement, torchrun's SIGTERM grace."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TOKENIZERS_PARALLELISM": "false"}
    if res.gpus_per_node == 0 and res.ranks_per_node > 1:
        env["OMP_NUM_THREADS"] = "1"
    if res.gpus_per_node:
        env[REQUIRE_CUDA_VAR] = str(res.gpus_per_node)
    if res.launcher == "torchrun":  # torchrun SIGKILLs workers this long after passing SIGTERM on (default 30 s)
        env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = str(launch.signal_grace_s)
    return {**env, **launch.env}


def local_executor(launch: LaunchConfig, res: StageResources) -> run.LocalExecutor:
    return run.LocalExecutor(ntasks_per_node=res.ranks_per_node, launcher=res.launcher, env_vars=task_env(launch, res))


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


GPU_RANK_CPUS = 8
"""Default CPU cores per rank of a GPU stage (``LaunchConfig.cpus_per_rank``)."""


def slurm_resources(launch: LaunchConfig, res: StageResources) -> dict:
    """``SlurmExecutor`` keyword arguments for CPUs, memory and node exclusivity of a stage (see LaunchConfig)."""
    per_rank = launch.cpus_per_rank or (GPU_RANK_CPUS if res.gpus_per_node else 1)
    # under torchrun one task per node runs every rank of the node; otherwise each task is one rank
    kwargs: dict = {"cpus_per_task": per_rank * (res.ranks_per_node if res.launcher == "torchrun" else 1)}
    if res.gpus_per_node:
        if launch.mem is not None:
            kwargs["mem"] = str(launch.mem)
        if launch.exclusive:
            kwargs["exclusive"] = True
    return kwargs


def slurm_executor(launch: LaunchConfig, res: StageResources, *, requeue_on_time_limit: bool) -> run.SlurmExecutor:
    if launch.ssh_host:
        tunnel = run.SSHTunnel(host=launch.ssh_host, user=launch.ssh_user or os.environ.get("USER", ""),
                               job_dir=launch.remote_job_dir or "~/.nemo_run/experiments")
    else:
        from nemo_run.config import get_nemorun_home

        tunnel = run.LocalTunnel(job_dir=os.path.join(get_nemorun_home(), "experiments"))
    # NeMo-Run needs an account to name jobs; clusters without accounting accept any, so fall back to the user
    account = launch.account or os.environ.get("SLURM_ACCOUNT") or getpass.getuser()
    # under torchrun NeMo-Run turns ntasks_per_node into torchrun's nproc-per-node and starts one task per node
    kwargs = dict(account=account, partition=launch.partition, nodes=res.nodes, ntasks_per_node=res.ranks_per_node,
                  time=launch.time, packager=run.Packager(), tunnel=tunnel, env_vars=task_env(launch, res),
                  launcher=res.launcher, signal=f"B:USR1@{launch.signal_grace_s}",
                  additional_parameters={"requeue": True},
                  setup_lines=signal_setup_lines(requeue_on_time_limit=requeue_on_time_limit),
                  **slurm_resources(launch, res))
    if res.gpus_per_node:
        kwargs["gpus_per_node"] = res.gpus_per_node
    if launch.container_image:
        kwargs.update(container_image=launch.container_image, container_mounts=launch.container_mounts)
    return run.SlurmExecutor(**kwargs)


def make_executor(launch: LaunchConfig, kind: str = "host", *, resumable: bool = False) -> run.Executor:
    """The executor of one stage of this kind; ``resumable`` stages requeue themselves at the SLURM time limit."""
    res = stage_resources(launch, kind)
    if launch.executor == "slurm":
        return slurm_executor(launch, res, requeue_on_time_limit=resumable)
    return local_executor(launch, res)
