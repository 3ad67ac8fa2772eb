"""Masked super-network == compacted sub-network == extracted standalone model, for many random sub-networks
of every family."""

import random

import pytest
import torch
from sampling import KINDS, random_subnet

from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.conversion.sharding import global_state_from_model, load_global_state
from nemo_subnet.models import build_gpt_model
from nemo_subnet.models.inference import forward_logits
from nemo_subnet.models.tiny_hf import FAMILY_VARIANTS, make_hf_model
from nemo_subnet.runtime import compute_device
from nemo_subnet.subnet.compact import compact_subnet
from nemo_subnet.subnet.config import SubnetConfig
from nemo_subnet.subnet.extract import extract_model_config, extract_state
from nemo_subnet.subnet.params import count_parameters, subnet_parameters
from nemo_subnet.subnet.supernet import build_supernet

CONFIGS_PER_FAMILY = 100  # 25 of each kind


def _supernet(variant):
    hf = make_hf_model(variant, seed=3)
    adapter = adapter_for_model_type(hf.config.model_type)
    cfg = adapter.config_from_hf(hf.config)
    state = adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__)
    supernet = build_supernet(cfg, perform_initialization=False)
    load_global_state(supernet, cfg, state)
    return cfg, supernet, state


def _extracted(cfg, resolved, state):
    sub_cfg = extract_model_config(cfg, resolved)
    model = build_gpt_model(sub_cfg, perform_initialization=False)
    load_global_state(model, sub_cfg, extract_state(cfg, resolved, state))
    return sub_cfg, model


@pytest.mark.parametrize("variant", FAMILY_VARIANTS + ("gpt_neox_sequential", "llama3_tied", "smollm2"))
def test_masked_and_compact_supernet_equal_extracted_model(variant, megatron_runtime):
    cfg, supernet, state = _supernet(variant)
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    rng = random.Random(variant)
    worst, layerwise_seen = 0.0, 0
    n_configs = CONFIGS_PER_FAMILY if variant in FAMILY_VARIANTS else 20
    for i in range(n_configs):
        subnet = random_subnet(cfg, rng, KINDS[i % len(KINDS)])
        resolved = supernet.set_subnet(subnet)
        masked = forward_logits(supernet, cfg, tokens)
        compact = compact_subnet(supernet, subnet)
        sub_cfg, model = _extracted(cfg, resolved, state)
        layerwise_seen += sub_cfg.is_layerwise
        extracted = forward_logits(model, sub_cfg, tokens)
        diff = (masked - extracted).abs().max().item()
        compact_diff = (forward_logits(compact, cfg, tokens) - extracted).abs().max().item()
        worst = max(worst, diff, compact_diff)
        assert diff <= 1e-4 and compact_diff <= 1e-4, (i, subnet, diff, compact_diff)
        n_params = sum(p.numel() for p in model.parameters())
        assert count_parameters(sub_cfg) == n_params == subnet_parameters(cfg, subnet), subnet
        assert sum(p.numel() for p in compact.parameters()) == n_params, subnet  # TP=1: nothing dummy, nothing more
    assert layerwise_seen > 0
    print(f"{variant}: {n_configs} configs, worst max abs diff {worst:.2e}")


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_full_config_is_bitwise_the_plain_model(variant, megatron_runtime):
    cfg, supernet, state = _supernet(variant)
    plain = build_gpt_model(cfg, perform_initialization=False)
    load_global_state(plain, cfg, state)
    tokens = torch.randint(0, cfg.vocab_size, (2, 12))
    reference = forward_logits(plain, cfg, tokens)
    assert torch.equal(forward_logits(supernet, cfg, tokens), reference)
    supernet.set_subnet(SubnetConfig(hidden=8, layers=[1]))
    supernet.reset_subnet()
    assert torch.equal(forward_logits(supernet, cfg, tokens), reference)
    assert count_parameters(cfg) == sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_masked_weights_get_exactly_zero_gradient(variant, megatron_runtime):
    cfg, supernet, state = _supernet(variant)
    rng = random.Random(1)
    for kind in KINDS:
        subnet = random_subnet(cfg, rng, kind)
        resolved = supernet.set_subnet(subnet)
        supernet.train()
        supernet.zero_grad(set_to_none=True)
        device = compute_device()
        tokens = torch.randint(0, cfg.vocab_size, (2, 10), device=device)
        position_ids = torch.arange(10, device=device).expand(2, 10)
        logits = supernet(tokens, position_ids, attention_mask=None)[..., : cfg.vocab_size]
        (logits.float().pow(2).mean()).backward()
        # Which entries the sub-network keeps is read off extraction applied to entry ids, an
        # independent statement of the same index arithmetic (validated by the equivalence test).
        ids = {name: torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape)
               for name, p in global_state_from_model(supernet).items()}
        kept_ids = extract_state(cfg, resolved, ids)
        kept = {name: set() for name in ids}
        for new_name, tensor in kept_ids.items():
            old_name = _source_name(new_name, resolved)
            kept[old_name] = set(tensor.flatten().long().tolist())
        for name, param in supernet.named_parameters():
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            flat = grad.flatten().cpu()  # compared on the host with host index sets
            masked = torch.ones(flat.numel(), dtype=torch.bool)
            masked[list(kept.get(name, ()))] = False
            if "word_embeddings" in name or "output_layer" in name:
                masked[cfg.vocab_size * cfg.hidden_size:] = False  # padded vocab rows: not part of any sub-network
            assert torch.count_nonzero(flat[masked]) == 0, (kind, name)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in supernet.parameters())
    supernet.reset_subnet()


def _source_name(new_name: str, resolved) -> str:
    parts = new_name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        parts[2] = str(resolved.layers[int(parts[2])])
    return ".".join(parts)
