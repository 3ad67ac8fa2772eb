"""Shared setup for the training tests: one prepared corpus, tiny model configs and checkpoints, run helpers.

Everything heavy is session-scoped; runs go through the real CLI in subprocesses (as users launch them),
one rank with ``python -m nemo_subnet.cli`` or several with torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
CLI = Path(__file__).parents[2] / "nemo_subnet" / "cli.py"
VOCAB = 500  # padded to 512: the padding-exclusion path is always exercised

TINY = dict(family="llama", vocab_size=VOCAB, hidden_size=64, num_layers=2, num_attention_heads=4, num_query_groups=2,
            ffn_hidden_size=128, kv_channels=16, max_position_embeddings=128, normalization="RMSNorm", norm_eps=1e-5,
            activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False)


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_config(tmp: Path, run_dir: Path, data_dir: Path, init: dict, **sections) -> dict:
    """A small run: seq 64, 4 samples per step in 2 micro-batches, checkpoints every 3 steps."""
    config = {
        "run_dir": str(run_dir), "init": init,
        "data": {"path": str(data_dir), "seq_length": 64, "micro_batch_size": 2, "global_batch_size": 4},
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4},
        "schedule": {"train_steps": 12, "warmup_steps": 2},
        "checkpoint": {"every_steps": 3, "keep_last": 2},
        "logging": {"eval_every": 6, "eval_iters": 2, "progress": False, "tensorboard": True},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def train_cmd(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(CLI), "train", "--config", str(config_path), *extra]


def run_train(config_path: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(config_path, *extra), capture_output=True, text=True, env=env(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    from nemo_subnet.data import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("train_data") / "stdlib"
    prepare_dataset(PrepareConfig(inputs=["stdlib"], out=out, train_tokenizer="sentencepiece", vocab_size=VOCAB,
                                  max_bytes=300_000, valid_fraction=0.1, progress=False))
    return out


@pytest.fixture(scope="session")
def model_yaml(tmp_path_factory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("models") / "tiny.yaml", TINY)


def make_checkpoint(model_cfg: dict, out: Path, seed: int) -> Path:
    cfg_path = write_yaml(out.parent / f"{out.name}.yaml", model_cfg)
    proc = subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), str(cfg_path), str(out), str(seed)],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def student_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(TINY, tmp_path_factory.mktemp("ckpt") / "student", seed=7)


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A different, larger teacher with the same vocabulary."""
    return make_checkpoint({**TINY, "num_layers": 4, "hidden_size": 96, "ffn_hidden_size": 192, "kv_channels": 24},
                           tmp_path_factory.mktemp("ckpt") / "teacher", seed=11)


@pytest.fixture(scope="session")
def baseline_run(tmp_path_factory, data_dir, model_yaml) -> Path:
    """An uninterrupted 12-step run from random init (reference for resume and loss-decrease tests)."""
    root = tmp_path_factory.mktemp("baseline")
    config = write_yaml(root / "run.yaml", run_config(root, root / "run", data_dir, {"random": str(model_yaml)}))
    run_train(config)
    return root / "run"
