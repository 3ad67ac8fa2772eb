"""torchrun worker: the RNG streams each rank gets from init_runtime, and the weights a random init draws.

Writes ``<out>/rank_<r>.pt``: the (pp, tp) rank, torch's initial seed, the first draws of the default stream
and of megatron's model-parallel (per TP rank) stream, and this rank's slice of the first layer's
``linear_fc1`` weight of a randomly initialised model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

TINY = dict(family="llama", vocab_size=96, hidden_size=32, num_layers=4, num_attention_heads=4, num_query_groups=2,
            ffn_hidden_size=64, kv_channels=8, max_position_embeddings=16, normalization="RMSNorm", norm_eps=1e-5,
            activation="silu", gated_mlp=False, add_bias_linear=False, add_qkv_bias=False, init_method_std=0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from megatron.core import parallel_state, tensor_parallel

    from nemo_subnet.models import ModelConfig, build_gpt_model
    from nemo_subnet.runtime import init_runtime, shutdown_runtime

    runtime = init_runtime(tp=args.tp, pp=args.pp, seed=1234)
    initial_seed = torch.initial_seed()
    tracker = tensor_parallel.get_cuda_rng_tracker()
    states = tracker.get_states()
    default_state = torch.get_rng_state()
    default_draw = torch.rand(4)
    with tracker.fork():
        tracker_draw = torch.rand(4)
    tracker.set_states(states)
    torch.set_rng_state(default_state)
    model = build_gpt_model(ModelConfig(**TINY))  # a random init, drawn from the streams above
    fc1 = model.decoder.layers[0].mlp.linear_fc1.weight.detach().float().cpu().clone()  # [ffn/tp, h]
    torch.save({"pp": parallel_state.get_pipeline_model_parallel_rank(),
                "tp": parallel_state.get_tensor_model_parallel_rank(), "initial_seed": initial_seed,
                "default": default_draw, "tracker": tracker_draw, "fc1": fc1},
               args.out / f"rank_{runtime.rank}.pt")
    dist.barrier()
    shutdown_runtime()


if __name__ == "__main__":
    main()
