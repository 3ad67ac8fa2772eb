"""A task that was given GPUs must run on them: fail with one line instead of falling back to the CPU backend.

Without CUDA, ``init_runtime`` installs the CPU backend and everything still runs — correct on a laptop,
disastrous on a cluster where a mis-set ``--gpus-per-node`` or a container without the driver would make
300 search evaluations of a 1B teacher crawl on CPU. The recipe's executors therefore set
``NEMO_SUBNET_REQUIRE_CUDA=<GPUs requested per node>`` on every GPU task, and this check (called at the top of
``init_runtime`` and of every pipeline stage) turns a missing or too small GPU set into a ``UserError``
naming what was requested and what the process can see.

Which GPU a rank takes (``local_device_index``): its local rank when it sees one GPU per rank of the node
(torchrun, or ``srun`` without per-task binding), and device 0 when it sees exactly one (``srun
--gpus-per-task=1`` / ``--gpu-bind``: SLURM gives every task its own ``CUDA_VISIBLE_DEVICES``, while
``SLURM_LOCALID`` still counts the node's tasks). Once the process group exists, ``check_distinct_gpus``
fails every rank with one line if two ranks of one host ended up on the same physical GPU.
"""

from __future__ import annotations

import os

REQUIRE_CUDA_VAR = "NEMO_SUBNET_REQUIRE_CUDA"
"""Set by the launcher on tasks that requested GPUs; the value is the GPUs requested per node (``1`` if unknown)."""


def requested_gpus(environ: dict | None = None) -> int:
    """GPUs this task requested per node (0: none, CPU is fine)."""
    from nemo_subnet.errors import UserError

    value = (os.environ if environ is None else environ).get(REQUIRE_CUDA_VAR, "").strip()
    if value in ("", "0"):
        return 0
    if not value.isdigit():
        raise UserError(f"{REQUIRE_CUDA_VAR}={value!r}: expected the number of GPUs requested per node (0 or more)")
    return int(value)


def check_requested_gpus(environ: dict | None = None) -> None:
    """Raise UserError when GPUs were requested but CUDA is unavailable, or this node runs more ranks than it sees
    GPUs (``local_rank % device_count`` would otherwise silently put two ranks on one GPU)."""
    import torch

    from nemo_subnet.errors import UserError

    env = os.environ if environ is None else environ
    wanted = requested_gpus(env)
    if wanted == 0:
        return
    visible = env.get("CUDA_VISIBLE_DEVICES")
    seen = (f"CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}, "
            f"torch.cuda.is_available()={torch.cuda.is_available()}, torch.version.cuda={torch.version.cuda}")
    if not torch.cuda.is_available():
        raise UserError(f"this task requested {wanted} GPU(s) per node ({REQUIRE_CUDA_VAR}={wanted}) but CUDA is not "
                        f"available ({seen}); refusing to run on CPU. Check the job's GPU request and the CUDA "
                        "build of torch, or set launch.gpus_per_node=0 to run on CPU.")
    ranks_here = int(env.get("LOCAL_WORLD_SIZE", "1"))
    count = torch.cuda.device_count()
    if ranks_here > count:
        raise UserError(f"{ranks_here} ranks on this node but only {count} GPU(s) visible ({seen}); each rank needs "
                        "its own GPU: launch one rank per allocated GPU")


def local_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device index of a rank with node-local rank ``local_rank`` that sees ``visible`` GPUs."""
    from nemo_subnet.cli import UserError

    if visible == 1:
        return 0  # per-task binding (or a one-GPU node): this task's GPU is the only one it sees
    if 0 <= local_rank < visible:
        return local_rank
    raise UserError(f"local rank {local_rank} but only {visible} GPU(s) visible (CUDA_VISIBLE_DEVICES="
                    f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most {visible} ranks per node, "
                    "or bind one GPU per task (srun --gpus-per-task=1)")


def check_distinct_gpus(placements: list[tuple[str, str]]) -> None:
    """``placements[rank]`` = (host, GPU UUID) of every rank: raise UserError when two ranks share a GPU."""
    from nemo_subnet.cli import UserError

    owner: dict[tuple[str, str], int] = {}
    for rank, place in enumerate(placements):
        place = tuple(place)
        if place in owner:
            raise UserError(f"ranks {owner[place]} and {rank} both run on GPU {place[1]} of host {place[0]}: each rank "
                            "needs its own GPU (check CUDA_VISIBLE_DEVICES / the launcher's GPU binding)")
        owner[place] = rank
