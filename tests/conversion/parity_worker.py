"""torchrun worker: HF logits == imported Megatron logits at a given TP/PP, for several variants.

Every rank builds the same random HF model (same seed), loads its shard, and the last pipeline stage
compares the gathered logits with transformers'. Prints one `PARITY` line per variant; exits non-zero
on a mismatch. With --check-rng it also checks Megatron's per-TP-rank RNG streams on the CPU backend.
"""

import argparse
import sys

import torch
import torch.distributed as dist

from nemo_subnet.models.tiny_hf import make_hf_model

from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.conversion.sharding import load_global_state
from nemo_subnet.models import build_gpt_model
from nemo_subnet.models.inference import forward_logits
from nemo_subnet.runtime import compute_device, init_runtime, shutdown_runtime


def check_rng() -> None:
    from megatron.core import parallel_state, tensor_parallel

    device = compute_device()  # dropout draws on the device (the CUDA generator on a GPU)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        tp_stream = torch.rand(4, device=device)
    default_stream = torch.rand(4, device=device)
    group = parallel_state.get_tensor_model_parallel_group()
    gathered_tp = [torch.empty(4, device=device) for _ in range(dist.get_world_size(group))]
    gathered_default = [torch.empty(4, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered_tp, tp_stream, group=group)
    dist.all_gather(gathered_default, default_stream, group=group)
    assert not torch.equal(gathered_tp[0], gathered_tp[1]), "TP ranks must draw different model-parallel dropout"
    assert torch.equal(gathered_default[0], gathered_default[1]), "the default stream must agree across TP ranks"
    print(f"RNG ok rank {dist.get_rank()}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--variants", required=True)
    parser.add_argument("--check-rng", action="store_true")
    args = parser.parse_args()
    runtime = init_runtime(tp=args.tp, pp=args.pp, seed=7)
    if args.check_rng:
        check_rng()
    worst = 0.0
    for variant in args.variants.split(","):
        hf_model = make_hf_model(variant, seed=11)
        adapter = adapter_for_model_type(hf_model.config.model_type)
        cfg = adapter.config_from_hf(hf_model.config)
        tokens = torch.randint(0, cfg.vocab_size, (2, 19), generator=torch.Generator().manual_seed(3))
        hf_state = hf_model.state_dict()
        model = build_gpt_model(cfg, perform_initialization=False)
        load_global_state(model, cfg, adapter.hf_to_megatron(cfg, hf_state.__getitem__))
        logits = forward_logits(model, cfg, tokens)
        if logits is not None:
            diff = (logits.cpu() - hf_model(tokens).logits).abs().max().item()
            worst = max(worst, diff)
            print(f"PARITY {variant} tp={args.tp} pp={args.pp} rank={runtime.rank} max_abs_diff={diff:.3e}")
    shutdown_runtime()
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
