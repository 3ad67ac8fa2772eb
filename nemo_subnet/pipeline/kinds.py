"""Where a stage runs: its kind, and the one mapping from a kind to nodes, ranks and GPUs.

Every launcher asks this module: the NeMo-Run executors (recipes/executors.py), the plain sbatch templates
(``python -m nemo_subnet.pipeline --print-launch``) and the runner (which kinds run on every rank). No launcher
spells the mapping out again.

- ``host``: one process, no GPU (data, report);
- ``single``: one process on one GPU (extract, export, the HF teacher import);
- ``evaluate``: ``eval_ranks`` ranks on one node, data parallel over evaluation batches (importance, search);
  default: every GPU of the node, 1 on CPU;
- ``train``: every node; one rank per GPU, or ``nproc_per_node`` CPU ranks (gloo) without GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StageKind = Literal["host", "single", "evaluate", "train"]
KINDS: tuple[StageKind, ...] = ("host", "single", "evaluate", "train")
EVERY_RANK_KINDS = ("evaluate", "train")
"""Kinds whose commands run on every rank of their launch (the others on global rank 0 only)."""


@dataclass(frozen=True)
class StageResources:
    nodes: int
    ranks_per_node: int
    gpus_per_node: int
    """GPUs requested per node (0: none)."""

    @property
    def launcher(self) -> str | None:
        """torchrun when the stage has more than one rank, else a plain process."""
        return "torchrun" if self.nodes * self.ranks_per_node > 1 else None


def eval_ranks(gpus_per_node: int, requested: int | None = None) -> int:
    """Ranks of importance and search: as requested, else every GPU of a node (1 on CPU)."""
    return requested if requested is not None else (gpus_per_node or 1)


def stage_resources(kind: StageKind, *, nodes: int = 1, gpus_per_node: int = 0, nproc_per_node: int = 1,
                    requested_eval_ranks: int | None = None) -> StageResources:
    """Nodes, ranks per node and GPUs per node of a stage of this kind on a launch of ``nodes`` nodes."""
    if kind == "host":
        return StageResources(1, 1, 0)
    if kind == "single":
        return StageResources(1, 1, 1 if gpus_per_node else 0)
    if kind == "evaluate":
        ranks = eval_ranks(gpus_per_node, requested_eval_ranks)
        return StageResources(1, ranks, ranks if gpus_per_node else 0)
    if kind == "train":
        return StageResources(nodes, gpus_per_node or nproc_per_node, gpus_per_node)
    raise ValueError(f"unknown stage kind {kind!r}; kinds: {', '.join(KINDS)}")
