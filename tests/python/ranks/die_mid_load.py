"""One rank of a job started without a supervisor: rank VICTIM kills itself with SIGKILL as soon as bytes move in a
load; the others must raise PeerError naming it, within the timeout."""

import os
import signal
import sys
import time

import shardcast
from shardcast import _shardcast

checkpoint, victim = sys.argv[1], int(sys.argv[2])
rank = int(os.environ["RANK"])
options = _shardcast.LoadOptions()
options.timeout = 10
if rank == victim:
    options.progress = lambda done, total: os.kill(os.getpid(), signal.SIGKILL) if done > 0 else None
start = time.monotonic()
try:
    _shardcast.load(checkpoint, options)
except shardcast.PeerError as e:
    print(f"PEERERROR rank={rank} ranks={e.ranks} after={time.monotonic() - start:.1f}s {type(e).__name__}: {e}",
          flush=True)
    sys.exit(3)
print(f"LOADED rank={rank}", flush=True)
