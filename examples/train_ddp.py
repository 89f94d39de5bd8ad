"""Data-parallel training from a node-shared checkpoint: build a small GPT on the meta device, give it its weights
with shardcast (copy-on-write views of the node's one copy: no random init, no state dict, no second copy), wrap it
in DistributedDataParallel (gloo, CPU) and train a few steps.

    shardcast-run --standalone -n 4 python3 examples/train_ddp.py /tmp/gpt-ckpt
    MASTER_PORT=29533 mpirun -np 4 -x MASTER_PORT python3 examples/train_ddp.py /tmp/gpt-ckpt

The checkpoint is written first (by rank 0, seeded) when the directory does not exist. Checks, and exits non-zero
unless: every rank starts from bit-exact weights, the loss goes down, and the node held about one copy of the model
after the load: what the load added to the node's shared memory (/proc/meminfo Shmem) plus, summed over the ranks,
to their own anonymous memory (PSS). Other work on the machine that allocates shared memory meanwhile would count
too.
"""

import argparse
import hashlib
import math
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import shardcast


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, 4 * dim)
        self.mlp_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        attended = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_out(nn.functional.gelu(self.mlp_in(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 1024, dim: int = 384, layers: int = 6, heads: int = 6, context: int = 64) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2 ties them
        self.register_buffer("positions", torch.arange(context), persistent=False)
        for module in self.modules():  # GPT-2's initialisation (a no-op on the meta device)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe(self.positions[: tokens.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def anonymous_memory() -> int:
    """This process's share of anonymous memory (PSS), in bytes: its own copies."""
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss_Anon:"))


def node_shmem() -> int:
    """Shared memory (tmpfs) in use on the node, in bytes: the node's one copy, whether or not a rank touched it."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Shmem:"))


def state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def join_process_group() -> None:
    # torchrun and shardcast-run set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; under mpirun, take Open MPI's.
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" in os.environ:
        os.environ["RANK"] = os.environ["OMPI_COMM_WORLD_RANK"]
        os.environ["WORLD_SIZE"] = os.environ["OMPI_COMM_WORLD_SIZE"]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group("gloo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint directory (written first if it does not exist)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-memory-ratio", type=float, default=1.10,
                        help="fail when the node holds more than this many copies of the model after the load")
    args = parser.parse_args()

    join_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not os.path.exists(args.checkpoint):
        torch.manual_seed(0)
        state = {k: v for k, v in GPT().state_dict().items() if k != "lm_head.weight"}  # tied: stored once
        shardcast.save_sharded(state, args.checkpoint, max_shard_size="20MB")
    dist.barrier()

    with shardcast.init_empty_weights():
        model = GPT()
    shardcast.topology()  # join shardcast's job first (MPI under mpirun): its runtime is not the load's memory
    dist.barrier()
    shmem_before, anon_before = node_shmem(), anonymous_memory()
    result = shardcast.load_into(model, args.checkpoint, placement="cow", assign=True, strict=True)
    anon_added = anonymous_memory() - anon_before
    dist.barrier()
    shmem_added = node_shmem() - shmem_before  # read by rank 0 once every rank has loaded
    model_bytes = sum(t.numel() * t.element_size() for t in {id(p): p for p in model.state_dict().values()}.values())

    digests = [None] * world
    dist.all_gather_object(digests, state_digest(model))
    private = shardcast.load(args.checkpoint, placement="private")  # a second path to the same bytes
    added_all = [None] * world
    dist.all_gather_object(added_all, anon_added)
    same_as_file = all(torch.equal(private[k], v) for k, v in model.state_dict().items() if k in private)
    del private

    model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1234 + rank)
    tokens = torch.randint(0, 1024, (4, 65), generator=generator)
    losses = []
    for _ in range(args.steps):
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    all_losses = [None] * world
    dist.all_gather_object(all_losses, losses)

    ok = True
    if rank == 0:
        node_added = shmem_added + sum(added_all)
        ratio = node_added / model_bytes
        print(f"loaded {result.loaded} tensors ({model_bytes / 1e6:.1f} MB) on {world} rank(s): "
              f"missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        print(f"node held {ratio:.2f}x the model after the load ({shmem_added / 1e6:.1f} MB shared, "
              f"{sum(added_all) / 1e6:.1f} MB private over {world} ranks; loading a state dict into a random-init "
              f"model holds {2 * world}x)")
        if len(set(digests)) != 1 or not same_as_file:
            print(f"FAIL: ranks did not start from bit-exact weights: {digests}")
            ok = False
        else:
            print(f"every rank started from bit-exact weights (sha256 {digests[0][:16]}...)")
        mean = [sum(step) / world for step in zip(*all_losses)]
        print("loss per step (mean over ranks): " + ", ".join(f"{x:.4f}" for x in mean))
        if not mean[-1] < mean[0]:
            print("FAIL: the loss did not go down")
            ok = False
        if ratio > args.max_memory_ratio:
            print(f"FAIL: the node held {ratio:.2f}x the model, above {args.max_memory_ratio}x")
            ok = False
    verdict = [ok]
    dist.broadcast_object_list(verdict, src=0)
    # torch 1.13 can deadlock tearing the gloo group down while its worker thread still frees the last collective's
    # Python-made tensors: drop DDP first, and end on a barrier (whose tensors are C++'s) before destroying the group.
    del model, optimizer
    dist.barrier()
    dist.destroy_process_group()
    return 0 if verdict[0] else 1


if __name__ == "__main__":
    sys.exit(main())
