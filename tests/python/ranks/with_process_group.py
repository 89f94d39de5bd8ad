"""One rank: torch.distributed's gloo group and shardcast in one script, in either order (ORDER = pg-first or
shardcast-first): they share MASTER_PORT's store, and each must keep working."""

import sys

import torch
import torch.distributed as dist

import shardcast

order, checkpoint = sys.argv[1], sys.argv[2]
if order == "pg-first":
    dist.init_process_group("gloo")
sd = shardcast.load(checkpoint, placement="cow", timeout=60)
if order == "shardcast-first":
    dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([float(rank)])
dist.all_reduce(total)
assert total.item() == sum(range(world)), total
weight = sd["embed.weight"].clone() if rank == 0 else torch.zeros_like(sd["embed.weight"])
dist.broadcast(weight, 0)
assert torch.equal(weight, sd["embed.weight"])
again = shardcast.load(checkpoint, placement="shared", timeout=60)  # shardcast still works after the group is up
assert torch.equal(again["embed.weight"], sd["embed.weight"])
dist.barrier()
dist.destroy_process_group()
print(f"OK {rank} {order}", flush=True)
