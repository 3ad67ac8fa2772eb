"""One entry point that brings up torch.distributed and Megatron's parallel state.

The launcher is detected from the environment, in this order:
- torchrun (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``),
- SLURM (``srun``: ``SLURM_PROCID``/``SLURM_NTASKS``; the master is the first host of the job's node
  list and the port is derived from the job id so every task agrees without talking),
- neither: a single process on a free local port.

The backend is NCCL on CUDA, gloo otherwise (where the CPU backend is also installed).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from nemo_subnet.runtime import cpu_backend


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    """"torchrun", "slurm" or "single"."""


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    device: torch.device
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # "node[01-04,07],other" -> "node01" without scontrol
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def detect_launch_env(environ: dict | None = None) -> LaunchEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        port = int(env.get("MASTER_PORT", 20000 + job_id % 20000))
        addr = env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         addr, port, "slurm")
    return LaunchEnv(0, 1, 0, "127.0.0.1", _free_port(), "single")


PIPELINE_SEED_STRIDE = 100
"""Seed offset per pipeline stage (Megatron-LM's ``_set_random_seed``: ``seed + 100 * pp_rank``)."""


def stage_seed(seed: int, pp_rank: int) -> int:
    """The seed of a pipeline stage's streams. Every stage holds different layers: with one seed, stage k would
    draw its layers' init (and dropout masks) from the same stream as stage 0. TP ranks of a stage share it
    (a TP-sharded weight is drawn whole and split, see models/config.py) and DP replicas too (megatron's DDP
    never broadcasts the initial weights: replicas agree because they draw the same numbers)."""
    return seed + PIPELINE_SEED_STRIDE * pp_rank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_runtime(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_minutes: int = 30) -> Runtime:
    """Initialize the process group, Megatron's model-parallel groups, device and RNG.

    Idempotent for the same (tp, pp); re-initializing with another layout rebuilds the Megatron groups
    (used by tools that load a checkpoint saved at one layout into another in one process).
    """
    from megatron.core import parallel_state, tensor_parallel

    from nemo_subnet.runtime.gpu_request import check_distinct_gpus, check_requested_gpus, local_device_index

    if tp > 1:
        # megatron orders each TP collective before the matmul it overlaps with by issuing both to one hardware
        # queue; read when the CUDA context is created, so it is set before any CUDA call here
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    check_requested_gpus()  # a task given GPUs never falls back to the CPU backend
    launch = detect_launch_env()
    if launch.world_size % (tp * pp) != 0:
        raise ValueError(f"world size {launch.world_size} is not divisible by tp*pp = {tp}*{pp}")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        # never wrap around (two ranks on one GPU); one visible GPU (srun --gpus-per-task=1) is device 0
        torch.cuda.set_device(local_device_index(launch.local_rank, torch.cuda.device_count()))
    else:
        cpu_backend.install()
    device = cpu_backend.compute_device()

    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank, world_size=launch.world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
        if use_cuda and launch.world_size > 1:
            placements = [None] * launch.world_size
            uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
            dist.all_gather_object(placements, (socket.gethostname(), uuid))
            check_distinct_gpus(placements)
    if parallel_state.model_parallel_is_initialized():
        if (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size()) != (tp, pp):
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)

    # python / numpy / torch default streams, and megatron's tracker (its per-TP-rank stream: seed + 2718 + tp_rank)
    seed = stage_seed(seed, parallel_state.get_pipeline_model_parallel_rank())
    seed_everything(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return Runtime(rank=launch.rank, world_size=launch.world_size, tp=tp, pp=pp,
                   dp=launch.world_size // (tp * pp), device=device, launcher=launch.launcher)


def shutdown_runtime() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def runtime_scope(tp: int = 1, pp: int = 1, seed: int = 1234):
    """init_runtime for the duration of a block; shuts down only what it brought up (a CLI command
    called from a process that already has a runtime, e.g. a recipe or a test, leaves it running)."""
    owned = not dist.is_initialized()
    runtime = init_runtime(tp=tp, pp=pp, seed=seed)
    try:
        yield runtime
    finally:
        if owned:
            shutdown_runtime()
