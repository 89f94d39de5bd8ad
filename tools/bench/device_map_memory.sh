#!/usr/bin/env bash
# Node memory of device_map loads under mpirun, side by side with the plain shared load (docs/benchmarks.md,
# "device_map"): N ranks, a synthetic checkpoint of SIZE, page cache warm. Each run's peak AnonPages + Shmem above the
# level before, Shmem alone and page cache come from `shardcast-bench measure`; the bytes each device holds from
# `shardcast plan --json`. Prints a table and writes the figures as JSON.
#   tools/bench/device_map_memory.sh [BUILD (build)] [SIZE (1GB)] [RANKS (4)] [OUT (device_map_memory.json)]
set -euo pipefail
build=$(realpath "${1:-build}")
size=${2:-1GB}
ranks=${3:-4}
out=${4:-device_map_memory.json}
work=$(mktemp -d /tmp/shardcast-dmb-XXXXXX)  # on disk, not /dev/shm: the disk part must come from files
trap 'rm -rf "$work"' EXIT
cli=$build/tools/shardcast
"$cli" synth "$work/ckpt" --size "$size" --dtypes torch > /dev/null
cat "$work"/ckpt/* > /dev/null  # page cache warm, so every run starts alike
root=()
[ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
mpirun=(mpirun -np "$ranks" --oversubscribe --bind-to none "${root[@]}")

cases=(
  "shared|"
  "cpu+disk|--device-map model.layers=disk,=cpu"
  "cuda+cpu+disk|--device-map model.layers.0=cuda,model.layers=disk,=cpu --device-stand-in"
  "disk|--device-map =disk"
)
names=()
for entry in "${cases[@]}"; do
  name=${entry%%|*}
  read -r -a flags <<< "${entry#*|}"
  names+=("$name")
  echo '{}' > "$work/$name.plan.json"
  [ ${#flags[@]} -gt 0 ] && "$cli" plan "$work/ckpt" "${flags[@]:0:2}" --json > "$work/$name.plan.json"
  "$build/tools/shardcast-bench" measure -- "${mpirun[@]}" "$cli" load "$work/ckpt" "${flags[@]}" \
    --report-out "$work/$name.report{rank}.json" | tail -n 1 > "$work/$name.measured.json"
done

/usr/bin/python3 - "$work" "$out" "$ranks" "$size" "${names[@]}" << 'PY'
import json, sys
work, ranks, size = sys.argv[1], int(sys.argv[3]), sys.argv[4]
load = lambda name, part: json.load(open(f"{work}/{name}.{part}.json"))
runs = [{"case": n, "plan": load(n, "plan"), "measured": load(n, "measured"), "report": load(n, "report0")}
        for n in sys.argv[5:]]
model = runs[0]["report"]["tensor_bytes"]
# What the ranks hold besides tensors (libraries, heaps): the plain load's peak less the one copy of the model.
overhead = runs[0]["measured"]["peak_unreclaimable_bytes"] - model
print(f"{ranks} ranks, {size} checkpoint ({model:,} bytes of tensors); process overhead {overhead:,} bytes\n")
print(f"{'case':<14} {'cpu':>13} {'cuda':>13} {'disk':>13} {'ring':>13} {'AnonPages+Shmem':>16} {'Shmem':>13} "
      f"{'expected':>13} {'ratio':>6}")
for run in runs:
    dev = run["plan"].get("device_bytes", {"cpu": model})
    ring = run["report"].get("ring_bytes", 0)
    # Expected: the processes themselves, the stand-in's "device" copy in every rank, and the node's one copy of the
    # cpu part or the ring, whichever is larger (devices load in turn, cuda first: the ring is gone before the cpu
    # part is staged); never the disk part.
    run["expected_unreclaimable_bytes"] = overhead + ranks * dev.get("cuda", 0) + max(dev.get("cpu", 0), ring)
    m = run["measured"]
    run["ratio"] = m["peak_unreclaimable_bytes"] / run["expected_unreclaimable_bytes"]
    print(f"{run['case']:<14} {dev.get('cpu', 0):>13,} {dev.get('cuda', 0):>13,} {dev.get('disk', 0):>13,} "
          f"{ring:>13,} {m['peak_unreclaimable_bytes']:>16,} {m['peak_shmem_bytes']:>13,} "
          f"{run['expected_unreclaimable_bytes']:>13,} {run['ratio']:>6.3f}")
json.dump({"ranks": ranks, "size": size, "tensor_bytes": model, "overhead_bytes": overhead, "runs": runs},
          open(sys.argv[2], "w"), indent=2)
print(f"\nwritten: {sys.argv[2]}")
PY
