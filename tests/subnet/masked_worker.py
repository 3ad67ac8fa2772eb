"""torchrun worker: masked and compacted super-network logits at a given TP/PP for seeded random sub-networks.

The last pipeline stage (TP rank 0) saves {"logits": {variant: [masked logits per config]}, "compact": {...}}
to --out; the test compares them with the extracted models in a TP=1 process.
"""

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from sampling import KINDS, random_subnet  # noqa: E402

from nemo_subnet.conversion.adapters import adapter_for_model_type  # noqa: E402
from nemo_subnet.conversion.sharding import load_global_state  # noqa: E402
from nemo_subnet.models.inference import forward_logits  # noqa: E402
from nemo_subnet.models.tiny_hf import make_hf_config, make_hf_model  # noqa: E402
from nemo_subnet.runtime import init_runtime, shutdown_runtime  # noqa: E402
from nemo_subnet.subnet.compact import compact_subnet  # noqa: E402
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig  # noqa: E402
from nemo_subnet.subnet.supernet import build_supernet  # noqa: E402


def sample_configs(cfg, variant: str, count: int):
    """``count`` random sub-networks, then two edge cases: at PP=2 one stage keeps no layer; at TP=2 one rank
    keeps no head group and no FFN neuron of a layer (its compacted shard holds zeroed dummies)."""
    rng = random.Random(f"dist-{variant}")
    configs = [random_subnet(cfg, rng, KINDS[i % len(KINDS)]) for i in range(count)]
    last_group, last_neuron = cfg.num_query_groups - 1, cfg.ffn_hidden_size - 1
    configs.append(SubnetConfig(hidden=list(range(0, cfg.hidden_size, 2)), layers=[0],
                                layer=LayerSubnet(query_groups=[0], heads_per_group=1, ffn=[0, 1, 2])))
    configs.append(SubnetConfig(layers=[cfg.num_layers - 1], layer=LayerSubnet(query_groups=[last_group], ffn=[last_neuron])))
    return configs


def main() -> int:
    from megatron.core import parallel_state

    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--pp", type=int, required=True)
    parser.add_argument("--variants", required=True)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    init_runtime(tp=args.tp, pp=args.pp, seed=5)
    vocab = min(make_hf_config(variant).vocab_size for variant in args.variants.split(","))  # valid for every variant
    tokens = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    results, compact = {}, {}
    for variant in args.variants.split(","):
        hf = make_hf_model(variant, seed=3)
        adapter = adapter_for_model_type(hf.config.model_type)
        cfg = adapter.config_from_hf(hf.config)
        supernet = build_supernet(cfg, perform_initialization=False)
        load_global_state(supernet, cfg, adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__))
        results[variant], compact[variant] = [], []
        for subnet in sample_configs(cfg, variant, args.configs):
            supernet.set_subnet(subnet)
            results[variant].append(forward_logits(supernet, cfg, tokens))
            compact[variant].append(forward_logits(compact_subnet(supernet, subnet), cfg, tokens))
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        tmp = Path(args.out + ".tmp")
        torch.save({"tokens": tokens, "logits": results, "compact": compact}, tmp)
        tmp.replace(args.out)
    dist.barrier()
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    sys.exit(main())
