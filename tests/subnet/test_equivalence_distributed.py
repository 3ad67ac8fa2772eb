"""Masked and compacted super-network under TP=2 / PP=2 (each rank masks / compacts its own shard, uneven
local widths and empty stages included) == extracted model."""

from pathlib import Path

import pytest
import torch
from masked_worker import sample_configs
from torchrun_utils import run_torchrun

from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.conversion.sharding import load_global_state
from nemo_subnet.models import build_gpt_model
from nemo_subnet.models.inference import forward_logits
from nemo_subnet.models.tiny_hf import make_hf_model
from nemo_subnet.subnet.config import resolve
from nemo_subnet.subnet.extract import extract_model_config, extract_state

WORKER = str(Path(__file__).with_name("masked_worker.py"))
CONFIGS = 8
pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("tp,pp,variants", [
    (2, 1, ("llama", "gpt_neox", "qwen3")),
    (1, 2, ("llama", "qwen2", "smollm2")),
    (2, 2, ("gpt_neox",)),
    (3, 1, ("smollm2",)),  # 9 heads in 3 groups: one group per rank; TP=2 cannot split them
])
def test_masked_and_compact_under_parallelism_equal_extracted(tp, pp, variants, tmp_path, megatron_runtime):
    out = tmp_path / "logits.pt"
    run_torchrun(WORKER, tp * pp, "--tp", str(tp), "--pp", str(pp), "--variants", ",".join(variants),
                 "--configs", str(CONFIGS), "--out", str(out))
    saved = torch.load(out)
    for variant in variants:
        hf = make_hf_model(variant, seed=3)
        adapter = adapter_for_model_type(hf.config.model_type)
        cfg = adapter.config_from_hf(hf.config)
        state = adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__)
        configs = sample_configs(cfg, variant, CONFIGS)
        for subnet, masked, compact in zip(configs, saved["logits"][variant], saved["compact"][variant], strict=True):
            resolved = resolve(cfg, subnet)
            sub_cfg = extract_model_config(cfg, resolved)
            model = build_gpt_model(sub_cfg, perform_initialization=False)
            load_global_state(model, sub_cfg, extract_state(cfg, resolved, state))
            extracted = forward_logits(model, sub_cfg, saved["tokens"]).cpu()
            diff = (masked - extracted).abs().max().item()
            compact_diff = (compact - extracted).abs().max().item()
            assert diff <= 1e-4 and compact_diff <= 1e-4, (variant, subnet, diff, compact_diff)
