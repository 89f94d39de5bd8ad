#!/bin/bash
# SLURM node epilog for shardcast: runs `shardcast gc` on each node as a job ends.
#
# A shardcast job's segments have no names (they reach local ranks as file descriptors), so the memory of a job that
# dies, however it dies, goes back with its last process: this is not needed for that. It removes what does carry a
# name: segments that earlier shardcast versions left when a job died, whose creator is gone; and, run as the job's
# user, that user's expired kept copies (load --keep; unexpired ones stay for the user's next job).
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
  # Kept copies live in a directory per user that only that user may enter: collect them as the user.
  if [ -n "${SLURM_JOB_UID:-}" ] && [ "$SLURM_JOB_UID" != 0 ] && command -v setpriv >/dev/null; then
    setpriv --reuid="$SLURM_JOB_UID" --regid="${SLURM_JOB_GID:-$SLURM_JOB_UID}" --clear-groups "$shardcast" gc 2>&1 |
      logger -t shardcast-epilog 2>/dev/null || true
  fi
fi
exit 0
