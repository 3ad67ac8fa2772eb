"""Imported logits == transformers logits under real tensor and pipeline parallelism (torchrun, gloo)."""

import re
from pathlib import Path

import pytest
import torch
from nemo_subnet.models.tiny_hf import FAMILY_VARIANTS, save_hf_model
from torchrun_utils import run_torchrun

WORKER = str(Path(__file__).with_name("parity_worker.py"))
CLI = str(Path(__file__).resolve().parents[2] / "nemo_subnet" / "cli.py")
pytestmark = pytest.mark.distributed


def _diffs(output: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"PARITY (\S+) .*max_abs_diff=(\S+)", output)}


@pytest.mark.parametrize("tp,pp,variants", [
    (2, 1, FAMILY_VARIANTS + ("gpt_neox_sequential",)),  # llama3_tied is MQA: one KV head cannot split
    (1, 2, FAMILY_VARIANTS + ("llama3_tied", "smollm2")),
    (3, 1, ("smollm2",)),  # 9 heads in 3 groups split over 3 ranks (TP=2 cannot split them)
    (2, 2, ("gpt_neox", "llama", "qwen2")),
])
def test_logits_match_hf_under_parallelism(tp, pp, variants):
    extra = ("--check-rng",) if tp > 1 else ()
    output = run_torchrun(WORKER, tp * pp, "--tp", str(tp), "--pp", str(pp), "--variants", ",".join(variants), *extra)
    diffs = _diffs(output)
    assert set(diffs) == set(variants), output[-3000:]
    assert max(diffs.values()) <= 1e-4, diffs
    if tp > 1:
        assert output.count("RNG ok") == tp * pp


def test_import_at_tp2_loads_at_tp1(tmp_path, megatron_runtime):
    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.models.inference import forward_logits

    hf_model = save_hf_model("llama", tmp_path / "hf", seed=5)
    run_torchrun(CLI, 2, "import-hf", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt"), "--tp", "2")
    cfg, model = load_model(tmp_path / "ckpt")
    tokens = torch.randint(0, cfg.vocab_size, (2, 13))
    diff = (forward_logits(model, cfg, tokens).cpu() - hf_model(tokens).logits).abs().max().item()
    assert diff <= 1e-4
