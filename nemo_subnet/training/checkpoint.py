"""Training checkpoints: everything a run needs to continue exactly where it stopped.

Layout of ``<run_dir>/checkpoints/step_XXXXXXX/`` (a superset of a model checkpoint, so
``checkpointing.load_model`` and export read it directly)::

    model.yaml         the student's ModelConfig, ``dtype`` = the run's precision (what the weights are in)
    weights/           megatron dist_checkpointing (torch_dist): {"model": ..., "optimizer": ...};
                       model keys are the plain model checkpoint's, optimizer keys are prefixed "optimizer."
    train_state.json   step, consumed samples, tokens, LR-scheduler state, the parallel layout
    rng/rank_XXXXX.pt  per-rank python / numpy / torch (/ cuda) generator states and megatron's RNG tracker
    tokenizer/         copied from the prepared data directory, when it has one

A directory is written as ``.step_XXXXXXX.partial`` by every rank and renamed by rank 0 once all ranks
finished (``checkpointing.atomic_directory``), so a kill mid-save leaves the previous checkpoints only.
The teacher is never part of it. RNG states are restored only at the same world size and layout; another
layout resumes model, optimizer, scheduler and data position, with fresh seeded RNG streams.
"""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel

from nemo_subnet.checkpointing import MODEL_CONFIG, TOKENIZER, WEIGHTS, atomic_directory
from nemo_subnet.models.config import ModelConfig

CHECKPOINTS = "checkpoints"
TRAIN_STATE = "train_state.json"
RNG = "rng"


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (partial saves are dot-prefixed and never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / TRAIN_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(model, optimizer, is_loading: bool, optimizer_sharding: str) -> dict:
    model_state = model.sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": optimizer_sharding}
    return {"model": model_state,
            "optimizer": optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=metadata)}


def save_checkpoint(run_dir: Path, step: int, *, model, model_cfg: ModelConfig, optimizer, train_state: dict,
                    keep_last: int, optimizer_sharding: str, tokenizer_dir: Path | None = None) -> Path:
    """Collective: write step ``step`` atomically, then drop all but the newest ``keep_last``."""
    out = step_dir(run_dir, step)
    main = _rank() == 0
    with atomic_directory(out, overwrite=True) as tmp:
        if main:
            (tmp / WEIGHTS).mkdir()
            (tmp / RNG).mkdir()
        if dist.is_initialized():
            dist.barrier()
        dist_checkpointing.save(_sharded_state(model, optimizer, False, optimizer_sharding), str(tmp / WEIGHTS))
        torch.save(rng_state(), tmp / RNG / f"rank_{_rank():05d}.pt")
        if main:
            # the weights are in the run's precision, whatever the init's config said (model_checkpoint.py and
            # every stage after it load them in this dtype)
            model_cfg.stored_as(model.config.params_dtype).save(tmp / MODEL_CONFIG)
            if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
                shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
            # written last: its presence marks the directory as a complete checkpoint
            (tmp / TRAIN_STATE).write_text(json.dumps(train_state, indent=1))
    if main:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return out


def _materialize_optimizer_state(optimizer) -> None:
    """A fresh distributed optimizer has no Adam state yet and cannot describe its sharded state for loading;
    megatron fills it with a zero-grad step (its own helper). Weights and state are then overwritten by the load."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(inner, "_init_optimizer_states_with_dummy_values") and not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()


@contextmanager
def _torch_adam_step_fix(optimizer):
    """megatron-core 0.16 + torch Adam (no apex / transformer-engine, i.e. every CPU run): the reshardable
    optimizer loaders copy every per-param state key from the checkpoint but leave torch Adam's "step" out of
    what they read (it is restored separately, from param_groups), then fail on the missing key. Hand them the
    already-restored step for that key, and un-share it afterwards (see below). Remove when megatron-core
    handles torch Adam's per-param step itself.""" 
    patched = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(inner, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def set_states(model_param, tensors, inner=inner, original=original):
            group_index, group_order = inner.model_param_group_index_map[model_param]
            state = inner.optimizer.state[inner.optimizer.param_groups[group_index]["params"][group_order]]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            return original(model_param, tensors)

        inner._set_main_param_and_optimizer_states = set_states
        patched.append(inner)
    try:
        yield
    finally:
        for inner in patched:
            del inner._set_main_param_and_optimizer_states
            # the loader also puts ONE step tensor into every param's state; torch Adam increments each
            # param's step in place, so a shared tensor would advance once per parameter per step
            for state in inner.optimizer.state.values():
                if "step" in state:
                    state["step"] = state["step"].clone()


def load_checkpoint(ckpt: Path, *, model, optimizer, layout: dict) -> dict:
    """Restore model + optimizer (any layout) and this rank's RNG (same layout only); returns train_state."""
    ckpt = Path(ckpt)
    train_state = json.loads((ckpt / TRAIN_STATE).read_text())
    _materialize_optimizer_state(optimizer)
    sharded = _sharded_state(model, optimizer, True, train_state["optimizer_sharding"])
    state = dist_checkpointing.load(sharded, str(ckpt / WEIGHTS))
    model.load_state_dict(state["model"])
    with torch.no_grad(), _torch_adam_step_fix(optimizer):  # main params of fp32 models are views of leaves
        optimizer.load_state_dict(state["optimizer"])
    rng_file = ckpt / RNG / f"rank_{_rank():05d}.pt"
    if train_state.get("layout") == layout and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return train_state


_WRITER_HELPER = None
"""The multiprocessing manager serving megatron's checkpoint-writer results queue (kept alive with the process)."""


def start_checkpoint_writer_helper() -> None:
    """Start megatron's checkpoint-writer helper process so that it neither dies of SIGTERM nor outlives its rank.

    megatron's dist_checkpointing collects its writers' results through a multiprocessing Manager (a helper
    process spawned on the first save). SLURM (preemption, ``scontrol requeue``, ``scancel --signal``) sends
    SIGTERM to every process of the job, not only to the ranks: killed by it, the very save the preemption asks
    for fails (BrokenPipeError) and the run exits 1 without its last checkpoint. So the helper ignores SIGTERM
    (the ranks handle it and save), and, since it can no longer be stopped by SIGTERM, it is tied to its rank
    with PR_SET_PDEATHSIG: a rank that dies hard (SIGKILL, OOM killer) takes its helper with it instead of
    leaving an orphan holding memory. Idempotent; a no-op on a megatron-core without this helper."""
    global _WRITER_HELPER
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:
        return
    if _WRITER_HELPER is not None or getattr(filesystem_async, "_results_queue", False) is not None:
        return  # already started, or another megatron-core layout: leave it to megatron
    import multiprocessing
    import os
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))  # what megatron's ctx.Manager() builds
    manager.start(_writer_helper_init, (os.getpid(),))
    filesystem_async._results_queue = manager.Queue()
    _WRITER_HELPER = manager


def _writer_helper_init(parent_pid: int) -> None:
    import os
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the helper may outlive a hard-killed rank
        pass
    if os.getppid() != parent_pid:  # the rank died before the death signal was armed
        os._exit(1)
