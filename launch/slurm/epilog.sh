#!/bin/bash
# SLURM node epilog for shardcast: runs `shardcast gc` on each node as a job ends.
#
# A shardcast job's segments have no names (they reach local ranks as file descriptors), so the memory of a job that
# dies, however it dies, goes back with its last process: this is not needed for that. It removes what does carry a
# name: segments that earlier shardcast versions left when a job died, whose creator is gone.
#
# Install: copy it to each node and point slurm.conf at it (Epilog=/etc/slurm/epilog.d/shardcast.sh), or call it from
# the site's epilog. It runs as root with slurmd's environment; set SHARDCAST here if shardcast is not on its PATH.
# An epilog that fails drains the node, so this one always exits 0.
shardcast=${SHARDCAST:-$(command -v shardcast || echo /usr/local/bin/shardcast)}
if [ -x "$shardcast" ]; then
  "$shardcast" gc 2>&1 | logger -t shardcast-epilog 2>/dev/null || true
  if [ -n "${SHARDCAST_SHM_DIR:-}" ] && [ -d "$SHARDCAST_SHM_DIR" ]; then
    "$shardcast" gc --shm-dir "$SHARDCAST_SHM_DIR" 2>&1 | logger -t shardcast-epilog 2>/dev/null || true
  fi
fi
exit 0
