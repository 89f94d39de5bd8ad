"""One rank of tools/bench/python_ranks.py: builds a model whose state_dict is the checkpoint's, and gets the
checkpoint into it by METHOD, timing from a barrier of all ranks to "model ready".

  naive    every rank builds the model (its memory touched, as init does), torch.load's each .bin shard and
           load_state_dict's it: the model plus one shard's state dict at a time per rank
  memmap   every rank builds the model, maps each safetensors file with numpy.memmap and copies every tensor in
           (what safetensors.torch.load_file + load_state_dict do)
  shardcast  the model is built under shardcast.init_empty_weights() and load_into(assign=True, placement="cow")
           gives it views of the node's one copy
  runtime  imports and barrier only: what the ranks' runtime itself holds, subtracted from the others

Usage: python_rank_worker.py METHOD SAFETENSORS_DIR BIN_DIR OUT_DIR (RANK and WORLD_SIZE from the launcher).
"""

import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy
import torch
from torch import nn

import shardcast

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def safetensors_headers(directory: Path):
    """(file, name, dtype, shape, begin, end) of every tensor, from the files' own headers."""
    out = []
    for f in sorted(directory.glob("*.safetensors")):
        with open(f, "rb") as fh:
            length = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                begin, end = meta["data_offsets"]
                out.append((f, name, DTYPES[meta["dtype"]], meta["shape"], 8 + length + begin, 8 + length + end))
    return out


def build_model(layout, device: str) -> nn.Module:
    model = nn.Module()
    for _, name, dtype, shape, _, _ in layout:
        owner = model
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        t = torch.empty(shape, dtype=dtype, device=device)
        if device != "meta":
            t.zero_()  # touch the memory, as any initialisation would
        owner.register_parameter(leaf, nn.Parameter(t, requires_grad=False))
    return model


def barrier(out: Path, rank: int, world: int, what: str) -> None:
    (out / f"{what}.{rank}").touch()
    deadline = time.monotonic() + 600
    while sum(1 for _ in out.glob(f"{what}.*")) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: the other ranks never reached '{what}'")
        time.sleep(0.005)


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def main() -> None:
    method, st_dir, bin_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    layout = safetensors_headers(st_dir)
    if method == "shardcast":
        shardcast.topology()  # join the job before the clock starts, as a training script would have
    barrier(out, rank, world, "start")
    start, io_before = time.time(), read_bytes()
    if method == "naive":
        model = build_model(layout, "cpu")
        for f in sorted(bin_dir.glob("*.bin")):
            model.load_state_dict(torch.load(f), strict=False)
    elif method == "memmap":
        model = build_model(layout, "cpu")
        params = dict(model.named_parameters())
        maps = {}
        with torch.no_grad():
            for f, name, dtype, shape, begin, end in layout:
                raw = maps.setdefault(f, numpy.memmap(f, dtype=numpy.uint8, mode="r"))
                view = torch.from_numpy(numpy.asarray(raw[begin:end])).view(dtype).reshape(shape)
                params[name].copy_(view)
        del maps
    elif method == "shardcast":
        with shardcast.init_empty_weights():
            model = build_model(layout, "meta")
        shardcast.load_into(model, st_dir, placement="cow", assign=True)
    elif method != "runtime":
        raise SystemExit(f"unknown method {method}")
    end = time.time()
    (out / f"rank{rank}.json").write_text(json.dumps({"start": start, "end": end, "read_bytes": read_bytes() - io_before}))
    barrier(out, rank, world, "done")  # everyone holds its model until all are ready: the driver samples the peak


if __name__ == "__main__":
    main()
