#!/usr/bin/env bash
# The kill matrix of docs/reliability.md: a 4-rank `shardcast load` of a 64 MB checkpoint under each launcher, with one
# rank (rank 0, the node leader and store host; or rank 2, a peer) SIGKILLed as a phase starts (SHARDCAST_KILL_AT),
# or at `stage` every rank at once (*: rank 0, then this script kills the others within milliseconds).
# Each run must end with every survivor stopped, non-zero, within 30 s of the kill (the goal is seconds), the victim
# named in the output, and nothing of the job left: no new name in /dev/shm and no shared memory held (Shmem in
# /proc/meminfo back within 16 MB), all without `shardcast gc`.
#
#   tests/launch/kill_matrix.sh SHARDCAST SHARDCAST_RUN [LAUNCHER...]      (mpirun shardcast-run store srun)
#
# `store` starts the ranks by hand with torchrun's variables and no supervisor, so only shardcast's own detection can
# stop them; `srun` needs a SLURM cluster (SLURM_CONF set; tests/launch/test_slurm.sh runs it). Prints a table and
# appends JSON lines to $KILL_MATRIX_OUT (default kill-matrix.jsonl); KILL_MATRIX_PHASE=stage runs one phase only.
# Exit status 1 if any run fails.
set -uo pipefail
shardcast=$(realpath "$1")
shardcast_run=$(realpath "$2")
shift 2
launchers=("$@")
[ ${#launchers[@]} -gt 0 ] || launchers=(mpirun shardcast-run store)
out=${KILL_MATRIX_OUT:-kill-matrix.jsonl}
ranks=4
work=$(mktemp -d "${TMPDIR:-/tmp}/kill-matrix.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$shardcast" synth "$work/ckpt" --size 64MB --dtypes torch > /dev/null || exit 1
failed=0

shmem_kb() { sed -n 's/^Shmem: *\([0-9]*\) kB$/\1/p' /proc/meminfo; }
shm_names() { ls /dev/shm | sort; }  # any name: the launchers' own (Open MPI's vader segments) too
now() { date +%s.%N; }

# run LAUNCHER PLACEMENT VICTIM PHASE [RANKS_PER_NODE]: one job; writes its output to $work/log.
run() {
  local launcher=$1 placement=$2 victim=$3 phase=$4 per_node=${5:-0}
  local args=(load "$work/ckpt" --timeout 60 --placement "$placement")
  [ "$placement" = cuda ] && args+=(--device-stand-in)
  # Victim *: rank 0 kills itself, and this script SIGKILLs every other process of the job as soon as it says so.
  local env=(SHARDCAST_KILL_AT="$phase:${victim/\*/0}" SHARDCAST_JOB_ID="kill-matrix-$$-$launcher-${victim/\*/all}-$phase")
  [ "$per_node" -gt 0 ] && env+=(SHARDCAST_RANKS_PER_NODE="$per_node")
  case $launcher in
    mpirun)
      local mpi=(mpirun -np $ranks --oversubscribe --bind-to none)
      [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
      for e in "${env[@]}"; do mpi+=(-x "$e"); done
      timeout -s KILL 90 "${mpi[@]}" "$shardcast" "${args[@]}" ;;
    shardcast-run)
      env "${env[@]}" timeout -s KILL 90 "$shardcast_run" -n $ranks "$shardcast" "${args[@]}" ;;
    srun)
      env "${env[@]}" timeout -s KILL 90 srun -n $ranks --mpi=pmix --overcommit "$shardcast" "${args[@]}" ;;
    store)
      local port pids=() status=0 r
      port=$((20000 + RANDOM % 20000))
      for ((r = 0; r < ranks; r++)); do
        env "${env[@]}" RANK=$r LOCAL_RANK=$r WORLD_SIZE=$ranks LOCAL_WORLD_SIZE=$ranks MASTER_ADDR=127.0.0.1 \
          MASTER_PORT=$port timeout -s KILL 90 "$shardcast" "${args[@]}" 2>&1 | sed "s/^/[rank$r]: /" &
        pids+=($!)
      done
      for r in "${pids[@]}"; do wait "$r" || status=$?; done
      return $status ;;
  esac
}

printf '%-14s %-7s %-6s %-12s %6s %9s %9s %s\n' launcher place victim phase status "exit (s)" "left MB" result
for launcher in "${launchers[@]}"; do
  cases=()
  for phase in catalog create stage attach materialize; do cases+=("shared $phase 0"); done
  # The GPU ring (host stand-in); 2 virtual nodes of 2 ranks (rank 2 leads node 1): staging, and the leaders'
  # exchange of segments between nodes.
  cases+=("cuda ring 0" "cuda stream 0" "shared stage 2" "shared exchange 2")
  for c in "${cases[@]}"; do
    read -r placement phase per_node <<< "$c"
    [ -z "${KILL_MATRIX_PHASE:-}" ] || [ "$phase" = "$KILL_MATRIX_PHASE" ] || continue
    victims=(0 2)
    [ "$phase" = stage ] && [ "$per_node" = 0 ] && victims+=("*")  # every rank at once: nobody left to clean up
    for victim in "${victims[@]}"; do
      names_before=$(shm_names)
      shmem_before=$(shmem_kb)
      start=$(now)
      : > "$work/log"
      watcher=""
      if [ "$victim" = "*" ]; then
        # The ranks only (their command lines start with the binary), not the launcher, which cleans up after its own.
        (until grep -q "kills itself" "$work/log"; do sleep 0.005; done
         pkill -KILL -f -- "^$shardcast load $work/ckpt") &
        watcher=$!
      fi
      (set -o pipefail; run "$launcher" "$placement" "$victim" "$phase" "$per_node" > "$work/log" 2>&1)
      status=$?
      [ -z "$watcher" ] || { kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null; }
      end=$(now)
      sleep 0.2  # the kernel frees a dead process's mappings as it reaps it; give the last one a moment
      left_kb=$(( $(shmem_kb) - shmem_before ))
      new_names=$(comm -13 <(echo "$names_before") <(shm_names) | tr '\n' ' ')
      killed_at=$(sed -n 's/.*kills itself at \([0-9.]*\)$/\1/p' "$work/log" | head -1)
      exit_s=$(echo "${killed_at:-$start} $end" | awk '{printf "%.1f", $2 - $1}')
      where=$phase
      [ "$per_node" -gt 0 ] && where="$phase/2nodes"
      problems=()
      [ -n "$killed_at" ] || problems+=("rank $victim never reached '$phase'")
      [ "$status" -ne 0 ] || problems+=("the job exited 0")
      awk -v s="$exit_s" 'BEGIN { exit !(s < 30) }' || problems+=("took ${exit_s} s")
      [ "$victim" = "*" ] || grep -q "rank $victim\b" "$work/log" || problems+=("no message names rank $victim")
      [ "$left_kb" -lt 16384 ] || problems+=("$((left_kb / 1024)) MB of shared memory held")
      [ -z "$new_names" ] || problems+=("left in /dev/shm: $new_names")
      result=ok
      if [ ${#problems[@]} -gt 0 ]; then
        result="FAIL: $(IFS=';'; echo "${problems[*]}")"
        failed=1
        sed 's/^/    | /' "$work/log" | tail -20
      fi
      printf '%-14s %-7s %-6s %-12s %6s %9s %9s %s\n' "$launcher" "$placement" "$victim" "$where" "$status" "$exit_s" \
        "$(awk -v k="$left_kb" 'BEGIN { printf "%.1f", k / 1024 }')" "$result"
      printf '{"launcher": "%s", "placement": "%s", "victim": "%s", "phase": "%s", "exit_status": %s, "seconds_to_exit": %s, "shmem_left_kb": %s, "names_left": "%s", "ok": %s}\n' \
        "$launcher" "$placement" "$victim" "$where" "$status" "$exit_s" "$left_kb" "$new_names" \
        "$([ "$result" = ok ] && echo true || echo false)" >> "$out"
    done
  done
done
exit $failed
