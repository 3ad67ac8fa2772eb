"""bf16 end to end: every family builds with bf16 weights (norms included), runs forward and backward
with finite values close to fp32, and the bf16 super-network still equals its extracted sub-network.

Tolerances are bf16's: 8 mantissa bits (relative rounding 2^-8 = 3.9e-3 per op), accumulated over 4
layers. Seen on CPU (tiny models, |logits| <= 1.7): max |bf16 - fp32| logits 1.5e-2..2.3e-2, relative
(Frobenius) 0.8e-2..1.0e-2; the tolerances below leave about 2x margin.
"""

import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "subnet"))

from sampling import KINDS, random_subnet  # noqa: E402

from nemo_subnet.conversion.adapters import adapter_for_model_type  # noqa: E402
from nemo_subnet.conversion.sharding import load_global_state  # noqa: E402
from nemo_subnet.models import build_gpt_model  # noqa: E402
from nemo_subnet.models.inference import forward_logits  # noqa: E402
from nemo_subnet.models.tiny_hf import FAMILY_VARIANTS, make_hf_model  # noqa: E402
from nemo_subnet.runtime import compute_device  # noqa: E402
from nemo_subnet.subnet.extract import extract_model_config, extract_state  # noqa: E402
from nemo_subnet.subnet.supernet import build_supernet  # noqa: E402

LOGITS_TOL = dict(rtol=2e-2, atol=4e-2)
"""bf16 model vs the fp32 model, elementwise (|logits| <= 1.7 here)."""
LOGITS_REL_TOL = 2e-2
"""bf16 model vs the fp32 model: ||bf16 - fp32|| / ||fp32|| over all logits."""
SUBNET_TOL = dict(rtol=1e-2, atol=2e-2)
SUBNET_REL_TOL = 1e-2
"""bf16 super-network vs its bf16 extracted sub-network: the same weights, summed in another order (masked
zeros, wider matmuls). Seen: max abs diff <= 9.8e-3, relative <= 2.7e-3 (0 for most configs)."""

FP32_EXCEPTIONS = {"rotary_pos_emb.inv_freq"}
"""Tensors that stay fp32 in a bf16 model, as in Megatron: the RoPE frequencies (a plain attribute, not a
parameter; the angles position * inv_freq need fp32 at long positions; cos/sin are cast to the
activations' dtype where they are applied). Not parameters either: the super-network's 0/1 masks and
active counts (exact in fp32, cast to the activations' dtype where they are multiplied in)."""


def _family(variant: str):
    hf = make_hf_model(variant, seed=3)
    adapter = adapter_for_model_type(hf.config.model_type)
    cfg = adapter.config_from_hf(hf.config)
    return cfg, adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__)


def _model(cfg, state, dtype, builder=build_gpt_model):
    model = builder(cfg, params_dtype=dtype, perform_initialization=False)
    load_global_state(model, cfg, state)
    return model


def _tokens(cfg, seq: int = 16):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.vocab_size, (2, seq + 1), generator=gen).to(compute_device())


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_every_parameter_is_bf16(variant, megatron_runtime):
    cfg, state = _family(variant)
    for builder in (build_gpt_model, build_supernet):
        model = _model(cfg, state, torch.bfloat16, builder)
        not_bf16 = [name for name, p in model.named_parameters() if p.dtype != torch.bfloat16]
        assert not not_bf16, (builder.__name__, not_bf16)
        norms = [name for name, _ in model.named_parameters() if "layernorm" in name]
        assert norms, "the norms must be among the parameters checked"
        assert model.rotary_pos_emb.inv_freq.dtype == torch.float32  # FP32_EXCEPTIONS


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_bf16_forward_backward_close_to_fp32(variant, megatron_runtime):
    cfg, state = _family(variant)
    tokens = _tokens(cfg)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    position_ids = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
    logits, grads = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(cfg, state, dtype).train()
        out = model(inputs, position_ids, attention_mask=None)[..., : cfg.vocab_size]  # [b, s, V]
        assert out.dtype == dtype
        loss = torch.nn.functional.cross_entropy(out.float().flatten(0, 1), labels.flatten())
        loss.backward()
        logits[dtype] = out.detach().float()
        grads[dtype] = {name: p.grad.float() for name, p in model.named_parameters()}
    assert torch.isfinite(logits[torch.bfloat16]).all()
    torch.testing.assert_close(logits[torch.bfloat16], logits[torch.float32], **LOGITS_TOL)
    assert _relative(logits[torch.bfloat16], logits[torch.float32]) <= LOGITS_REL_TOL
    worst = 0.0
    for name, grad in grads[torch.bfloat16].items():
        assert torch.isfinite(grad).all(), name
        worst = max(worst, _relative(grad, grads[torch.float32][name]))
    flat = lambda g: torch.cat([t.flatten() for t in g.values()])  # noqa: E731
    cosine = torch.nn.functional.cosine_similarity(flat(grads[torch.bfloat16]), flat(grads[torch.float32]), dim=0)
    print(f"{variant}: logits rel {_relative(logits[torch.bfloat16], logits[torch.float32]):.2e}, "
          f"worst grad rel {worst:.2e}, grad cosine {cosine.item():.5f}")
    assert cosine >= 0.99


@pytest.mark.parametrize("variant", FAMILY_VARIANTS + ("smollm2",))
def test_bf16_supernet_equals_extracted_subnet(variant, megatron_runtime):
    cfg, state = _family(variant)
    supernet = _model(cfg, state, torch.bfloat16, build_supernet)
    tokens = _tokens(cfg)[:, :-1]
    rng = random.Random(f"bf16-{variant}")
    for i, static_graph in enumerate((False, False, True, True)):
        supernet.set_static_graph(static_graph)
        resolved = supernet.set_subnet(random_subnet(cfg, rng, KINDS[i % len(KINDS)]))
        sub_cfg = extract_model_config(cfg, resolved)
        sub = _model(sub_cfg, extract_state(cfg, resolved, state), torch.bfloat16)
        masked, extracted = forward_logits(supernet, cfg, tokens), forward_logits(sub, sub_cfg, tokens)
        assert torch.isfinite(masked).all()
        print(f"{variant} static={static_graph}: max diff {(masked - extracted).abs().max().item():.2e}, "
              f"rel {_relative(masked, extracted):.2e}")
        torch.testing.assert_close(masked, extracted, **SUBNET_TOL)
        assert _relative(masked, extracted) <= SUBNET_REL_TOL
