"""Helpers of the training tests (tiny configs, run commands, metrics), imported by name: a test module cannot
import them from ``conftest``, a name pytest gives every test directory's conftest in turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def make_checkpoint(model_cfg: dict, out: Path, seed: int) -> Path:
    cfg_path = write_yaml(out.parent / f"{out.name}.yaml", model_cfg)
    proc = subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), str(cfg_path), str(out), str(seed)],
                          capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out
