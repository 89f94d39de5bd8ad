"""shardcast against its peers on one GPU, side by side in one run, on the same safetensors checkpoint:

  shardcast      shardcast.load(placement="cuda"): the pinned ring, h2d transport (one rank)
  load_file      safetensors.torch.load_file(shard, device="cuda:0") for every shard
  safe_open      transformers-style: safe_open(shard, framework="pt"), then get_tensor(name).to("cuda:0") per tensor,
                 as from_pretrained(device_map="cuda") moves each tensor

Each run is a fresh process that initialises CUDA first, then times the load to "every tensor on the GPU,
synchronized". Host memory is the node's AnonPages + Shmem (/proc/meminfo) sampled every 5 ms during the load, above
its level just before (page cache is reclaimable and not counted, as docs/benchmarks.md explains). Warm: the files
were read once before; cold: the page cache is dropped before each run (root only; skipped otherwise). A per-tensor
byte sum computed on the GPU checks that all methods hold the same bytes.

  PYTHONPATH=build-gpu/python python3 tests/gpu/peers_bench.py CHECKPOINT --out PREFIX [--rounds 2] [--no-cold]

--device cpu runs the same comparison into host memory (shardcast placement "private"): the script's own check on a
machine without a GPU.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

METHODS = ("shardcast", "load_file", "safe_open")


def node_bytes() -> int:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            values[key] = int(value.split()[0]) * 1024
    return values["AnonPages"] + values["Shmem"]


def shard_files(checkpoint: Path):
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / n for n in names]
    return [checkpoint / "model.safetensors"]


def child(method: str, checkpoint: Path, device: str) -> dict:
    import torch

    on_gpu = device != "cpu"
    if on_gpu:
        torch.zeros(1, device=device)  # the CUDA context is not what we time
        torch.cuda.synchronize()
    if method == "shardcast":
        import shardcast
    else:
        from safetensors import safe_open
        from safetensors.torch import load_file
    files = shard_files(checkpoint)

    peak = base = node_bytes()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, node_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        start = time.perf_counter()
        if method == "shardcast":
            state = shardcast.load(checkpoint, placement="cuda" if on_gpu else "private", verbose=False)
        elif method == "load_file":
            state = {}
            for f in files:
                state.update(load_file(f, device=device))
        else:
            state = {}
            for f in files:
                with safe_open(f, framework="pt") as handle:
                    for name in handle.keys():
                        state[name] = handle.get_tensor(name).to(device)
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        sampler.join()

    assert all(t.device == torch.device(device) for t in state.values())
    total = sum(t.numel() * t.element_size() for t in state.values())
    sums = {name: int(t.contiguous().view(-1).view(torch.uint8).sum(dtype=torch.int64)) if t.numel() else 0
            for name, t in state.items()}
    return {"method": method, "seconds": seconds, "bytes": total, "host_peak_bytes": peak - base, "sums": sums}


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(checkpoint: Path):
    for f in shard_files(checkpoint):
        with open(f, "rb") as handle:
            while handle.read(64 << 20):
                pass


def run(method: str, checkpoint: Path, device: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", method, str(checkpoint), "--device", device],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", default="peers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint, args.device)))
        return

    rows, errors = [], []
    warm(args.checkpoint)
    for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits every method alike
        for method in METHODS:
            rows.append(dict(run(method, args.checkpoint, args.device), cache="warm"))
    cold = not args.no_cold and drop_caches()
    if cold:
        for method in METHODS:
            drop_caches()
            rows.append(dict(run(method, args.checkpoint, args.device), cache="cold"))

    reference = next((r["sums"] for r in rows if "sums" in r), None)
    table = ["| method | cache | runs | GB/s (best) | seconds (median) | host peak (AnonPages+Shmem) | same bytes |",
             "|---|---|---|---|---|---|---|"]
    summary = []
    for cache in ("warm", "cold"):
        for method in METHODS:
            runs = [r for r in rows if r["method"] == method and r["cache"] == cache]
            good = [r for r in runs if "seconds" in r]
            errors += [f"{method} ({cache}): {r['error']}" for r in runs if "error" in r]
            if not good:
                continue
            best = min(r["seconds"] for r in good)
            entry = {"method": method, "cache": cache, "runs": len(good), "bytes": good[0]["bytes"],
                     "best_seconds": best, "median_seconds": statistics.median(r["seconds"] for r in good),
                     "best_bytes_per_second": good[0]["bytes"] / best,
                     "host_peak_bytes": max(r["host_peak_bytes"] for r in good),
                     "same_bytes": all(r["sums"] == reference for r in good)}
            summary.append(entry)
            table.append(f"| {method} | {cache} | {len(good)} | {entry['best_bytes_per_second'] / 1e9:.2f} | "
                         f"{entry['median_seconds']:.3f} | {entry['host_peak_bytes'] / 1e6:.0f} MB | "
                         f"{'yes' if entry['same_bytes'] else 'NO'} |")
    if not cold:
        table.append("\ncold cache: not measured (dropping the page cache needs root)")
    text = "\n".join(table) + "\n" + "".join(f"\nerror: {e}" for e in errors)
    print(text)
    Path(args.out + ".md").write_text(text + "\n")
    Path(args.out + ".json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": summary,
                                                    "errors": errors}, indent=2) + "\n")
    sys.exit(1 if errors or not all(e["same_bytes"] for e in summary) else 0)


if __name__ == "__main__":
    main()
