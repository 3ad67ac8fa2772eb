"""Model checkpoints: a directory that loads at any TP/PP and is never seen half-written.

Layout::

    DIR/model.yaml        ModelConfig (what the weights compute)
    DIR/weights/          megatron dist_checkpointing (torch_dist), resharded on load
    DIR/hf_config.json    the source HF config, template for export (optional)
    DIR/tokenizer/        tokenizer files, copied through to export (optional)

Every rank writes its shards into ``.<name>.partial`` beside DIR; rank 0 renames it to DIR once all
ranks are done, so an interrupted save leaves nothing under DIR's name.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from nemo_subnet.models.builder import build_gpt_model
from nemo_subnet.models.config import ModelConfig

MODEL_CONFIG = "model.yaml"
WEIGHTS = "weights"
HF_CONFIG = "hf_config.json"
TOKENIZER = "tokenizer"


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _broadcast_error(error: BaseException | None) -> None:
    """Raise on every rank if any rank failed, so no rank waits at a barrier forever."""
    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, None if error is None else f"{type(error).__name__}: {error}")
    failed = [f for f in flags if f]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"another rank failed: {failed[0]}")


@contextmanager
def atomic_directory(out_dir: str | Path, *, overwrite: bool = False):
    """Yield a temporary directory that becomes ``out_dir`` on success and disappears on failure.

    Collective when torch.distributed is initialized: every rank must enter it.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    error = None
    if _is_main():
        try:
            if out_dir.exists() and not overwrite:
                raise FileExistsError(f"output {out_dir} already exists (choose another path or remove it)")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except BaseException as err:  # noqa: BLE001 - re-raised on every rank below
            error = err
    _broadcast_error(error)
    error = None
    try:
        yield tmp
    except BaseException as err:  # noqa: BLE001
        error = err
    try:
        _broadcast_error(error)
    except BaseException:
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _is_main():
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    _barrier()


def save_model(model, cfg: ModelConfig, ckpt_dir: Path, *, hf_config: dict | None = None,
               tokenizer_dir: Path | None = None) -> None:
    """Write ``model`` (this rank's part) into ``ckpt_dir``, an existing directory (see atomic_directory)."""
    ckpt_dir = Path(ckpt_dir)
    if _is_main():
        (ckpt_dir / WEIGHTS).mkdir(parents=True, exist_ok=True)
    _barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(ckpt_dir / WEIGHTS))
    if _is_main():
        cfg.save(ckpt_dir / MODEL_CONFIG)
        if hf_config is not None:
            (ckpt_dir / HF_CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, ckpt_dir / TOKENIZER)


def read_model_config(ckpt_dir: str | Path) -> ModelConfig:
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / MODEL_CONFIG).is_file() or not (ckpt_dir / WEIGHTS).is_dir():
        raise FileNotFoundError(f"{ckpt_dir} is not a nemo-subnet checkpoint (needs {MODEL_CONFIG} and {WEIGHTS}/)")
    return ModelConfig.load(ckpt_dir / MODEL_CONFIG)


def load_model(ckpt_dir: str | Path, *, builder: Callable = build_gpt_model, params_dtype: torch.dtype | None = None,
               parallel_output: bool = True, **build_kwargs):
    """(ModelConfig, this rank's model) from a model or training checkpoint, at the current runtime's TP/PP.

    ``builder`` builds the module (``build_gpt_model``, or ``build_supernet`` for an elastic model);
    ``build_kwargs`` go to it (e.g. ``execution``).
    """
    ckpt_dir = Path(ckpt_dir)
    cfg = read_model_config(ckpt_dir)
    model = builder(cfg, params_dtype=params_dtype, parallel_output=parallel_output, perform_initialization=False,
                    **build_kwargs)
    sharded = model.sharded_state_dict()
    state = dist_checkpointing.load(sharded, str(ckpt_dir / WEIGHTS))
    # a training checkpoint also returns the optimizer's common (non-sharded) state: keep the model's keys
    model.load_state_dict({k: v for k, v in state.items() if k in sharded})
    return cfg, model
