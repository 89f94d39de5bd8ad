#!/usr/bin/env bash
# Loads under a real one-node SLURM cluster (scripts/slurm-cluster): 4 tasks of `srun --mpi=pmix` on one node and on
# 2 virtual nodes, `mpirun` inside an sbatch allocation, and the example launch/slurm/train.sbatch. Each run: every
# rank's digests equal `shardcast digest`, the reports show 4 ranks and the right node count, the job read each byte
# from storage once, and /dev/shm keeps none of its segments. The node epilog (launch/slurm/epilog.sh) removes a
# planted orphan segment when a job ends, and the kill matrix runs under srun (tests/launch/kill_matrix.sh).
# Afterwards no process of the cluster is left.
#
#   tests/launch/test_slurm.sh SHARDCAST_BINARY SOURCE_DIR     (CTest passes both; exit 77 = skipped)
set -euo pipefail

shardcast=$1
source_dir=$2
skip=77

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: needs root to run slurmctld/slurmd and munged"
  exit $skip
fi
for p in slurmctld slurmd slurm-client munge; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    echo "SKIP: Debian package $p is not installed (scripts/setup installs it)"
    exit $skip
  fi
done

work=$(mktemp -d /tmp/test_slurm.XXXXXX)
chmod 755 "$work" # munged runs as user munge and must reach its socket under it
cluster=$work/cluster
conf=$cluster/etc/slurm.conf
ckpt=$work/ckpt
ranks=4
failed=0

cleanup() {
  local rc=$?
  if [ -f "$cluster/.slurm-cluster" ]; then
    if [ $rc -ne 0 ]; then
      for f in "$cluster"/log/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
    fi
    "$source_dir/scripts/slurm-cluster" stop "$cluster" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  failed=1
}

# Clients find the cluster by SLURM_CONF. It is set per command, not exported, so that the last check can find every
# process of this cluster by it (the daemons, slurmstepd and tasks all inherit it) without finding this shell.
slurm() { SLURM_CONF=$conf "$@"; }

# A value from shardcast's pretty-printed JSON (one key per line).
json_field() { sed -n "s/^ *\"$2\": \([0-9]*\),\?$/\1/p" "$1"; }

start_s=$SECONDS
# 4 CPUs and 4 fake GPUs whatever the machine has, for the example's --ntasks-per-node and --gpus-per-task.
# The shipped epilog, told where this build's shardcast is (slurmd runs it with its own environment).
printf '#!/bin/sh\nSHARDCAST=%s exec %s\n' "$shardcast" "$source_dir/launch/slurm/epilog.sh" >"$work/epilog"
chmod 755 "$work/epilog"
"$source_dir/scripts/slurm-cluster" start "$cluster" --cpus $ranks --gpus $ranks --epilog "$work/epilog"
daemon_pids=$(cat "$cluster/munge/munged.pid" "$cluster/run/slurmctld.pid" "$cluster/run/slurmd.pid")
echo "== cluster up in $((SECONDS - start_s)) s (daemon pids: ${daemon_pids//$'\n'/ })"

"$shardcast" synth "$ckpt" --size 8MB --dtypes torch
"$shardcast" digest "$ckpt" >"$work/digest.ref"
tensor_bytes=$("$shardcast" inspect "$ckpt" --json | sed -n 's/^ *"tensor_bytes": \([0-9]*\),$/\1/p')
file_bytes=$(cat "$ckpt"/* | wc -c)
# The page where each shard's header ends and its data begins comes in with the header: a mapped load skips it.
header_pages=$(($(ls "$ckpt"/*.safetensors | wc -l) * $(getconf PAGESIZE)))

# check NAME OUT_DIR NODE_COUNT: the assertions every launch path must meet.
check() {
  local name=$1 out=$2 nodes=$3 r report bytes total=0 job left=()
  for ((r = 0; r < ranks; r++)); do
    if ! cmp -s "$work/digest.ref" "$out/digest$r"; then
      fail "$name: rank $r digests differ from 'shardcast digest' (or are missing)"
      diff "$work/digest.ref" "$out/digest$r" | head -5 || true
    fi
    report=$out/report$r.json
    [ -f "$report" ] || { fail "$name: rank $r wrote no report"; continue; }
    [ "$(json_field "$report" world_size)" = $ranks ] || fail "$name: rank $r world_size is not $ranks"
    [ "$(json_field "$report" node_count)" = "$nodes" ] || fail "$name: rank $r node_count is not $nodes"
    bytes=$(json_field "$report" rank_bytes_read)
    total=$((total + ${bytes:-0}))
  done
  # Each byte read once per job: at least every tensor byte (less the header pages), at most the files plus 10%
  # (headers re-read, index).
  if [ $((total + header_pages)) -lt "$tensor_bytes" ] || [ $((total * 10)) -ge $((file_bytes * 11)) ]; then
    fail "$name: the job read $total bytes from storage; want >= $tensor_bytes (tensors), < 110% of $file_bytes (files)"
  fi
  # Segments have no names (earlier versions named them shardcast-<job id>-...): none of this job's may appear. The
  # kill matrix below also checks that no memory stays held.
  for job in $(sed -n 's/^ *"job_id": "\(.*\)",$/\1/p' "$out"/report*.json 2>/dev/null | sort -u); do
    left=(/dev/shm/shardcast-"$job"-*)
    [ ! -e "${left[0]}" ] || fail "$name: left in /dev/shm: ${left[*]}"
  done
  echo "== $name: $ranks ranks, $nodes node(s), $total bytes read by the job (tensors $tensor_bytes, files $file_bytes)"
}

# load OUT_DIR LAUNCHER...: the ranks write their digests and reports to OUT_DIR. Each launch has a 60 s limit so
# that a hang still reaches the cleanup within CTest's 300 s (a CTest timeout would leave the daemons running: they
# are not in this process group).
# Out of the page cache before each job: a mapped load (map_files auto) reads only what the page cache lacks.
evict() {
  local f
  sync "$ckpt"/*
  for f in "$ckpt"/*; do dd if="$f" iflag=nocache count=0 status=none; done
}

load() {
  local out=$1
  shift
  mkdir "$out"
  evict
  "$@" "$shardcast" load "$ckpt" --timeout 30 --digest-out "$out/digest{rank}" --report-out "$out/report{rank}.json"
}

# --kill-on-bad-exit: a rank that fails before MPI_Init would leave the others waiting in it, where shardcast's own
# --timeout does not reach.
srun=(srun -n "$ranks" --mpi=pmix --overcommit --kill-on-bad-exit=1)

# A named segment of a dead job (as earlier versions left): the epilog of the next job removes it.
planted=/dev/shm/shardcast-epilog-probe-$$
head -c 8192 /dev/zero >"$planted"
t=$SECONDS
load "$work/srun" slurm timeout 60 "${srun[@]}" || fail "srun --mpi=pmix: exit status $?"
check "srun -n $ranks --mpi=pmix ($((SECONDS - t)) s)" "$work/srun" 1
for ((i = 0; i < 100; i++)); do [ -e "$planted" ] && sleep 0.2; done
if [ -e "$planted" ]; then
  fail "the epilog did not remove the orphan $planted within 20 s of the job's end"
  rm -f "$planted"
else
  echo "== epilog: the orphan segment planted before the job is gone"
fi

t=$SECONDS
SHARDCAST_RANKS_PER_NODE=2 load "$work/srun2" slurm timeout 60 "${srun[@]}" ||
  fail "srun --mpi=pmix with SHARDCAST_RANKS_PER_NODE=2: exit status $?"
check "srun -n $ranks --mpi=pmix, 2 virtual nodes ($((SECONDS - t)) s)" "$work/srun2" 2

# batch NAME SBATCH_ARGS...: submits a batch job, waits for it and shows its output; NAME fails unless it completed.
# (sbatch --wait would poll after 2 s and then every 8 s: polling ourselves saves 8 s a job.)
batch() {
  local name=$1 job state=""
  shift
  job=$(slurm sbatch --parsable --output="$work/batch-%j.out" "$@") || { fail "$name: sbatch refused the job"; return; }
  local deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ]; do
    state=$(slurm scontrol show job "$job" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' || true)
    case $state in PENDING | CONFIGURING | RUNNING | COMPLETING) sleep 0.3 ;; *) break ;; esac
  done
  cat "$work/batch-$job.out" 2>/dev/null || true
  [ "$state" = COMPLETED ] || fail "$name: batch job $job is $state, not COMPLETED"
}

# mpirun inside a batch allocation: Open MPI takes the allocation from SLURM's environment and starts the ranks
# itself (on one node without srun).
t=$SECONDS
mkdir "$work/sbatch"
cat >"$work/job.sh" <<EOF
#!/bin/bash
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np $ranks --oversubscribe --bind-to none "$shardcast" load "$ckpt" --timeout 30 \\
  --digest-out "$work/sbatch/digest{rank}" --report-out "$work/sbatch/report{rank}.json"
EOF
evict
batch "sbatch + mpirun" -n $ranks --overcommit "$work/job.sh"
check "sbatch + mpirun -np $ranks ($((SECONDS - t)) s)" "$work/sbatch" 1

# The shipped example, one node of $ranks tasks with a (fake) GPU each; it writes the reports under its directory.
t=$SECONDS
mkdir "$work/train"
evict
SHARDCAST=$shardcast batch "launch/slurm/train.sbatch" --chdir="$work/train" --nodes=1 --ntasks-per-node=$ranks \
  --cpus-per-task=1 "$source_dir/launch/slurm/train.sbatch" "$ckpt" --timeout 30 --digest-out "$work/train/digest{rank}"
mv "$work/train"/shardcast-*/report*.json "$work/train/" 2>/dev/null || true
check "launch/slurm/train.sbatch ($((SECONDS - t)) s)" "$work/train" 1

# A rank SIGKILLed at each phase of a load under srun: the survivors stop in seconds naming it, nothing is left.
t=$SECONDS
slurm env KILL_MATRIX_OUT="$work/kill-matrix.jsonl" "$source_dir/tests/launch/kill_matrix.sh" "$shardcast" \
  "$(dirname "$shardcast")/shardcast-run" srun || fail "the kill matrix under srun (above)"
echo "== kill matrix under srun ($((SECONDS - t)) s)"

t=$SECONDS
"$source_dir/scripts/slurm-cluster" stop "$cluster"
for pid in $daemon_pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "daemon pid $pid ($(cat "/proc/$pid/comm")) still runs after stop"; fi
done
# Every process started by the cluster (daemons, slurmstepd, tasks) has its SLURM_CONF in its environment.
stragglers=$(grep -lsz "^SLURM_CONF=$conf\$" /proc/[0-9]*/environ | cut -d/ -f3 | tr '\n' ' ' || true)
[ -z "$stragglers" ] || fail "processes of the test cluster still run after stop: pids $stragglers"
echo "== cluster stopped in $((SECONDS - t)) s"

if [ $failed -ne 0 ]; then
  exit 1
fi
echo "PASS: srun --mpi=pmix (1 and 2 nodes), sbatch + mpirun and train.sbatch loads are bit-exact, each byte read once;"
echo "      the epilog removed an orphan; under srun every killed rank stopped the others and left nothing"
