"""Session fixtures for the end-to-end search tests: a tiny prepared corpus and a tiny checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
VOCAB = 500
TINY = dict(family="llama", vocab_size=VOCAB, hidden_size=64, num_layers=4, num_attention_heads=4, num_query_groups=2,
            ffn_hidden_size=128, kv_channels=16, max_position_embeddings=64, normalization="RMSNorm", norm_eps=1e-5,
            activation="silu", gated_mlp=True, add_bias_linear=False, add_qkv_bias=False, init_method_std=0.1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    from nemo_subnet.data import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("search_data") / "stdlib"
    prepare_dataset(PrepareConfig(inputs=["stdlib"], out=out, train_tokenizer="sentencepiece", vocab_size=VOCAB,
                                  max_bytes=150_000, valid_fraction=0.2, progress=False))
    return out


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search_ckpt")
    (root / "model.yaml").write_text(yaml.safe_dump(TINY))
    out = root / "teacher"
    proc = subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), str(root / "model.yaml"), str(out), "3"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out
