#!/usr/bin/python3
"""N Python ranks on one node get a checkpoint into their model, three ways side by side (docs/benchmarks.md):
torch.load of .bin shards + load_state_dict (naive), numpy.memmap of safetensors + copy (memmap), and
shardcast.load_into(assign=True, placement="cow") (shardcast). For each method and N it reports the node's peak
memory net of the ranks' runtime, as a multiple of the checkpoint's bytes S, and the time from a barrier of all ranks
to the last rank's "model ready".

Node memory is AnonPages + Shmem from /proc/meminfo, sampled every 20 ms while the ranks run, minus its value before
they start, minus the same peak for ranks that only import torch and shardcast (the runtime). Page cache is not
counted (reclaimable); the files are read once beforehand so that every method starts from a warm cache. A
(method, N) whose estimated need exceeds 70 % of MemAvailable is skipped and says so.

  PYTHONPATH=build/python /usr/bin/python3 tools/bench/python_ranks.py --size 2GB --ranks 1,2,4,8
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("python_rank_worker.py")
METHODS = {"a": "naive", "b": "memmap", "c": "shardcast"}
# Bytes a method holds on the node, in checkpoint sizes, for the skip rule: the model per rank, plus a shard's
# state dict per rank (naive; a shard is at most S), plus the node's one copy (shardcast).
NEED = {"naive": lambda n: 2 * n, "memmap": lambda n: n, "shardcast": lambda n: 1, "runtime": lambda n: 0}


def meminfo():
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            values[key] = int(value.split()[0]) * 1024
    return values


def node_bytes() -> int:
    m = meminfo()
    return m["AnonPages"] + m["Shmem"]


def run(method, n, st, bin_, tools):
    out = Path(tempfile.mkdtemp(prefix=f"pyranks-{method}-{n}-"))
    base = node_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], node_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [str(tools / "shardcast-run"), "--standalone", "-n", str(n), sys.executable, str(WORKER), method,
               str(st), str(bin_), str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    done.set()
    sampler.join()
    if result.returncode != 0:
        raise SystemExit(f"{method} on {n} ranks failed:\n{result.stdout}\n{result.stderr}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]
    shutil.rmtree(out)
    return {"peak_bytes": peak[0] - base, "seconds": max(r["end"] for r in ranks) - min(r["start"] for r in ranks),
            "read_bytes": sum(r["read_bytes"] for r in ranks)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2GB")
    parser.add_argument("--ranks", default="1,2,4,8")
    parser.add_argument("--methods", default="a,b,c")
    parser.add_argument("--cache-dir", default="/tmp/shardcast-bench-py")
    parser.add_argument("--tools", default=str(ROOT / "build" / "tools"), help="where shardcast and shardcast-run are")
    parser.add_argument("--json-out", default=str(ROOT / "docs" / "bench" / "python-2GB.json"))
    args = parser.parse_args()
    tools = Path(args.tools)
    ranks = [int(x) for x in args.ranks.split(",")]
    methods = [METHODS[m] for m in args.methods.split(",")]

    cache = Path(args.cache_dir)
    st, bin_ = cache / f"ckpt-{args.size}-st", cache / f"ckpt-{args.size}-bin"
    for directory, fmt in ((st, "safetensors"), (bin_, "bin")):
        if not directory.exists():
            subprocess.run([str(tools / "shardcast"), "synth", str(directory), "--size", args.size,
                            "--max-shard-size", "500MB", "--dtypes", "torch", "--format", fmt], check=True)
    size = sum(f.stat().st_size for f in st.glob("*.safetensors"))
    for f in [*st.iterdir(), *bin_.iterdir()]:  # a warm page cache for every method
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass

    rows = []
    for n in ranks:
        runtime = run("runtime", n, st, bin_, tools)
        for method in methods:
            need = NEED[method](n) * size
            available = meminfo()["MemAvailable"]
            if need > 0.7 * available:
                rows.append({"method": method, "ranks": n, "skipped": f"needs about {need / 1e9:.1f} GB, "
                             f"{available / 1e9:.1f} GB available"})
                print(f"{method:9} N={n}: skipped ({rows[-1]['skipped']})", flush=True)
                continue
            r = run(method, n, st, bin_, tools)
            net = r["peak_bytes"] - runtime["peak_bytes"]
            rows.append({"method": method, "ranks": n, "seconds": r["seconds"], "node_peak_net_bytes": net,
                         "node_peak_over_S": net / size, "read_bytes": r["read_bytes"],
                         "runtime_peak_bytes": runtime["peak_bytes"]})
            print(f"{method:9} N={n}: {r['seconds']:6.2f} s  node {net / size:5.2f} x S", flush=True)

    table = ["| method | " + " | ".join(f"N={n}" for n in ranks) + " |", "|---|" + "---|" * len(ranks)]
    for method in methods:
        cells = []
        for n in ranks:
            row = next(r for r in rows if r["method"] == method and r["ranks"] == n)
            cells.append("skipped" if "skipped" in row else f"{row['node_peak_over_S']:.2f} x S, {row['seconds']:.2f} s")
        table.append(f"| {method} | " + " | ".join(cells) + " |")
    print("\n".join(table))
    c = {r["ranks"]: r for r in rows if r["method"] == "shardcast" and "skipped" not in r}
    if 1 in c and max(c) > 1:
        print(f"shardcast: time at N={max(c)} / N=1 = {c[max(c)]['seconds'] / c[1]['seconds']:.2f}; "
              f"worst node memory {max(r['node_peak_over_S'] for r in c.values()):.2f} x S")
    report = {"date": datetime.date.today().isoformat(), "checkpoint_bytes": size, "size": args.size,
              "machine": {"nproc": os.cpu_count(), "mem_total": meminfo()["MemTotal"], "kernel": platform.release()},
              "torch": torch.__version__, "rows": rows, "table": table}
    Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
