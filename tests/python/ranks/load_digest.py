"""One rank: load CKPT with PLACEMENT [TP_SIZE [RULE]] and print this rank's digest of every tensor, one line each."""

import hashlib
import sys

import shardcast
from reference import raw_bytes

checkpoint, placement = sys.argv[1], sys.argv[2]
tp_size = int(sys.argv[3]) if len(sys.argv) > 3 else 1
rules = sys.argv[4:] or None
sd = shardcast.load(checkpoint, placement=placement, tp_size=tp_size, tp_rules=rules, timeout=60)
rank = shardcast.topology()["rank"]
lines = [f"{name} {str(t.dtype)} {list(t.shape)} {hashlib.sha256(raw_bytes(t)).hexdigest()}" for name, t in sd.items()]
for line in sorted(lines):  # one write per line: ranks sharing a pipe interleave whole lines only
    sys.stdout.write(f"DIGEST {rank} {line}\n")
    sys.stdout.flush()
