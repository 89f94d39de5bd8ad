"""One rank: load_into a Tiny model; rank 1's model has an extra parameter, so strict loading fails there, and every
other rank must raise PeerError naming rank 1 (not wait for it)."""

import os
import sys

from torch import nn

import shardcast
from tiny_model import Tiny

model = Tiny()
rank = int(os.environ["RANK"])
if rank == 1:
    model.extra = nn.Parameter(model.embed.weight.new_zeros(3))
try:
    shardcast.load_into(model, sys.argv[1], strict=True, timeout=60)
except shardcast.PeerError as e:
    print(f"PEERERROR rank={rank} ranks={e.ranks}: {e}", flush=True)
    sys.exit(3)
except ValueError as e:
    print(f"VALUEERROR rank={rank}: {e}", flush=True)
    sys.exit(4)
print(f"LOADED rank={rank}", flush=True)
