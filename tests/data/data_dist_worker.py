"""torchrun worker: build GPTDatasets with an initialized gloo process group and dump what each rank sees."""

import json
import os
import sys

import torch
import torch.distributed as dist


def main() -> None:
    data_dir, cache_dir, out_dir = sys.argv[1:4]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from nemo_subnet.data import GPTDataConfig, MicroBatchIterator, build_gpt_datasets

    data = build_gpt_datasets(GPTDataConfig(data_dir=data_dir, seq_length=32, cache_dir=cache_dir), 100, None)
    batches = MicroBatchIterator(data.train, 2, dp_rank=rank, dp_size=world)
    tokens = [next(batches)["tokens"].tolist() for _ in range(3)]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"len": len(data.train), "first": data.train[0]["tokens"].tolist(), "batches": tokens}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
