"""Shared setup for the training tests: one prepared corpus, tiny model configs and checkpoints, run helpers.

Everything heavy is session-scoped; runs go through the real CLI in subprocesses (as users launch them),
one rank with ``python -m nemo_subnet.cli`` or several with torchrun.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import TINY, VOCAB, make_checkpoint, run_config, run_train, write_yaml


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
