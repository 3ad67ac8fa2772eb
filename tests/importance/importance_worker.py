"""torchrun worker: importance scores of a tiny super-network at several layouts (TP=2, PP=2, DP=2).

``python -m torch.distributed.run --nproc-per-node 2 importance_worker.py --variant llama --out DIR``
writes DIR/<layout>.safetensors (rank 0) for every layout; the test compares them with TP=1 in-process.
"""

import argparse
import sys
from pathlib import Path

import torch.distributed as dist

from nemo_subnet.conversion.adapters import adapter_for_model_type
from nemo_subnet.conversion.sharding import load_global_state
from nemo_subnet.importance.collect import ImportanceConfig, compute_importance
from nemo_subnet.importance.scores import LayerMetric
from nemo_subnet.importance.evaluation import random_batches
from nemo_subnet.models.tiny_hf import make_hf_model
from nemo_subnet.runtime import init_runtime, shutdown_runtime
from nemo_subnet.subnet.supernet import build_supernet

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "dp2": (1, 1)}
SEQ, MBS, BATCHES = 16, 2, 2


def scores_at(variant: str, tp: int, pp: int):
    init_runtime(tp=tp, pp=pp, seed=5)
    hf = make_hf_model(variant, seed=3)
    adapter = adapter_for_model_type(hf.config.model_type)
    cfg = adapter.config_from_hf(hf.config)
    supernet = build_supernet(cfg, perform_initialization=False)
    load_global_state(supernet, cfg, adapter.hf_to_megatron(cfg, hf.state_dict().__getitem__))
    data = random_batches(cfg.vocab_size, num_batches=BATCHES, seq_length=SEQ, micro_batch_size=MBS)
    # the layer-drop evaluations too, so their layout independence is tested
    return compute_importance(supernet, cfg, data, ImportanceConfig(layer_metric=LayerMetric.PERPLEXITY, progress=False))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="llama")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for name in args.layouts.split(","):
        scores = scores_at(args.variant, *LAYOUTS[name])
        if dist.get_rank() == 0:
            scores.save(Path(args.out) / f"{name}.safetensors")
        dist.barrier()
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    sys.exit(main())
