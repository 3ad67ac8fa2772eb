"""torchrun worker of real_teacher.py: a checkpoint's logits at a given TP (every rank loads its shard).

The gathered logits of the last pipeline stage's TP rank 0 are saved to --out; real_teacher.py compares them.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--tp", type=int, required=True)
    parser.add_argument("--tokens", required=True, help=".pt file holding a [b, s] token tensor")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch.distributed as dist
    from megatron.core import parallel_state

    from nemo_subnet.checkpointing import load_model
    from nemo_subnet.models.inference import forward_logits
    from nemo_subnet.runtime import init_runtime, shutdown_runtime

    init_runtime(tp=args.tp, pp=1, seed=0)
    cfg, model = load_model(args.ckpt)
    logits = forward_logits(model, cfg, torch.load(args.tokens))  # [b, s, vocab], gathered over TP
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        torch.save(logits.cpu(), args.out)
    dist.barrier()
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    sys.exit(main())
