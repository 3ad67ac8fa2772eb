"""One rank of a two-node rendezvous test: prints what torchrun gave it and proves the ranks talk (gloo)."""

import os
import socket

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
# the address this rank's node reaches the master from (a UDP connect sends nothing; it picks the route)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    probe.connect((os.environ["MASTER_ADDR"], 9))
    node_addr = probe.getsockname()[0]
ranks = [None] * world
dist.all_gather_object(ranks, (rank, int(os.environ["GROUP_RANK"]), node_addr))
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
print(f"rank={rank} node_rank={os.environ['GROUP_RANK']} nnodes={os.environ['GROUP_WORLD_SIZE']} "
      f"local_rank={os.environ['LOCAL_RANK']} world_size={world} master={os.environ['MASTER_ADDR']} "
      f"node_addr={node_addr} run_id={os.environ['TORCHELASTIC_RUN_ID']} allreduce={total.item():g} peers={sorted(ranks)}", flush=True)
dist.destroy_process_group()
