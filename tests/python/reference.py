"""Reference checkpoints written without shardcast: safetensors by hand from the format's spec, .bin by torch.save,
so that what shardcast loads is compared with what other tools write."""

import json
import struct
from pathlib import Path
from typing import Dict

import torch

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    return bytes(t.view(torch.uint8).numpy()) if t.numel() else b""


def write_safetensors(path: Path, tensors: Dict[str, torch.Tensor]) -> None:
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors.items():
        data = raw_bytes(t)
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_sharded(directory: Path, shards: Dict[str, Dict[str, torch.Tensor]], fmt: str = "safetensors") -> None:
    """shards: file name -> tensors; writes the files and model.safetensors.index.json / pytorch_model.bin.index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for file, tensors in shards.items():
        if fmt == "safetensors":
            write_safetensors(directory / file, tensors)
        else:
            torch.save(tensors, directory / file)
        for name, t in tensors.items():
            weight_map[name] = file
            total += t.numel() * t.element_size()
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and raw_bytes(a) == raw_bytes(b)
