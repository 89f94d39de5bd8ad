#!/usr/bin/env python3
"""Writes the malformed-checkpoint corpus (docs/reliability.md) into OUT_DIR, deterministically.

usage: make_malformed.py OUT_DIR

Each case is a checkpoint (one file, or a directory with an index) that shardcast must reject: `verify` and `inspect`
exit 1 with a message naming the file and the defect, never a signal or a hang. Three sources:

  rule/      handcrafted, one per format rule (docs/formats.md), each with a word its message must hold;
  trunc/     sound files cut at every structural boundary (length prefix, JSON tokens, zip headers and records);
  flip/      sound files with one bit flipped at structural bytes (JSON syntax, numbers, dtypes, zip fields) or
             anywhere in a .bin record, and length fields set to 0, 1, max and off by one.

A mutation is kept only when this script's own reference checks call it broken (a safetensors validator written from
the format's rules; for .bin, Python's zipfile CRC check and torch.load): a flip inside a tensor name or a float can
leave a sound file, and a sound file is not a malformed case. MANIFEST.tsv lists every case: path, source, the word
expected in the message (empty for mutations, whose message need only name the file).

Needs PyTorch (Debian's python3-torch) for the .bin cases.
"""

import io
import json
import os
import random
import shutil
import struct
import sys
import warnings
import zipfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from safetensors_digest import no_duplicates  # noqa: E402  the fixtures' strict-JSON key check

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

# ---------------------------------------------------------------------------------------------------------------
# safetensors: a writer and a reference validator written from the format's rules (huggingface/safetensors).


def safetensors_bytes(tensors, metadata=None, header=None):
    """tensors: [(name, dtype, shape, data bytes)] in data order. header: raw header text instead of the JSON."""
    if header is None:
        entries = {}
        if metadata is not None:
            entries["__metadata__"] = metadata
        offset = 0
        for name, dtype, shape, data in tensors:
            entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
            offset += len(data)
        header = json.dumps(entries, separators=(",", ":"))
        header += " " * (-(8 + len(header)) % 8)
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + b"".join(t[3] for t in tensors)


def strict_json(text):
    """Parses text as one JSON value with nothing but spaces after it and nothing before it."""
    decoder = json.JSONDecoder(object_pairs_hook=no_duplicates, parse_constant=lambda c: (_ for _ in ()).throw(
        ValueError(c)))
    value, end = decoder.raw_decode(text)
    if text[end:].strip(" "):
        raise ValueError("trailing bytes")
    return value


def depth(value):
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def safetensors_ok(blob):
    """True when a reader following the format's rules accepts blob (and its BOOL bytes are 0 or 1)."""
    try:
        if len(blob) < 8:
            return False
        n = struct.unpack("<Q", blob[:8])[0]
        if n > 100_000_000 or 8 + n > len(blob):
            return False
        text = blob[8:8 + n].decode("utf-8")
        if not text.startswith("{"):
            return False
        root = strict_json(text)
        if not isinstance(root, dict) or depth(root) > 16:
            return False
        data = blob[8 + n:]
        spans = []
        for name, info in root.items():
            if name == "__metadata__":
                if info is None:
                    continue
                if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                    return False
                continue
            if not isinstance(info, dict) or info.get("dtype") not in DTYPE_SIZES:
                return False
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                return False
            if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and o >= 0
                                                                            for o in offsets):
                return False
            numel = 1
            for d in shape:
                numel *= d
            if numel >= 2**64 or offsets[0] > offsets[1] or offsets[1] - offsets[0] != numel * DTYPE_SIZES[
                    info["dtype"]]:
                return False
            spans.append((offsets[0], offsets[1], info["dtype"]))
        spans.sort()
        end = 0
        for begin, stop, dtype in spans:
            if begin != end:
                return False
            if dtype == "BOOL" and any(b > 1 for b in data[begin:stop]):
                return False
            end = stop
        return end == len(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def base_tensors(rng):
    floats = lambda n: struct.pack(f"<{n}f", *[rng.uniform(-2, 2) for _ in range(n)])
    return [
        ("embed.weight", "F32", [4, 4], floats(16)),
        ("norm.bias", "BF16", [4], bytes(rng.randrange(256) for _ in range(8))),
        ("ids", "I64", [3], struct.pack("<3q", 7, -1, 2**40)),
        ("mask", "BOOL", [5], bytes([1, 0, 1, 1, 0])),
    ]


def json_boundaries(text):
    """Offsets in text just before and after each structural character outside strings."""
    cuts, in_string, escaped = set(), False, False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                cuts.update((i, i + 1))
            continue
        if c == '"':
            in_string = True
            cuts.update((i, i + 1))
        elif c in "{}[]:,":
            cuts.update((i, i + 1))
    return sorted(cuts)


def structural_positions(text):
    """Offsets of JSON syntax, digits, and dtype strings: bytes whose flip a sound reader must notice."""
    positions, in_string, start = [], False, 0
    for i, c in enumerate(text):
        if in_string:
            if c == '"':
                in_string = False
                word = text[start + 1:i]
                if word in DTYPE_SIZES:
                    positions.extend(range(start + 1, i))
                positions.append(i)
            continue
        if c == '"':
            in_string, start = True, i
            positions.append(i)
        elif c in "{}[]:," or c.isdigit():
            positions.append(i)
    return positions


# ---------------------------------------------------------------------------------------------------------------
# .bin: torch.save archives, and a reference that calls one broken.


def bin_ok(blob):
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            if any(i.compress_type != zipfile.ZIP_STORED for i in z.infolist()):
                return False
            names = [i.filename for i in z.infolist()]
            if len(names) != len(set(names)) or z.testzip() is not None:
                return False
        state = torch.load(io.BytesIO(blob), weights_only=True)
        return all(t.dtype != torch.bool or bool(((t == 0) | (t == 1)).all()) for t in state.values())
    except Exception:
        return False


def base_bin():
    g = torch.Generator().manual_seed(13)
    big = torch.randn(6, 4, generator=g)
    embed = torch.randn(4, 3, generator=g)
    state = {"weight": big, "rows": big[1:3], "cols": big[:, 1:3], "embed": embed, "head": embed,
             "half": torch.randn(5, generator=g).to(torch.bfloat16), "ids": torch.arange(4),
             "mask": torch.tensor([True, False, True])}
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()


def zip_boundaries(blob):
    """Offsets of every local header, record start and end, central directory entry and the end record."""
    cuts = set()
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            local = info.header_offset
            name_len, extra_len = struct.unpack("<HH", blob[local + 26:local + 30])
            data = local + 30 + name_len + extra_len
            cuts.update((local, local + 4, local + 30, data, data + info.file_size // 2, data + info.file_size))
    eocd = blob.rfind(b"PK\x05\x06")
    cd_offset = struct.unpack("<I", blob[eocd + 16:eocd + 20])[0]
    pos = cd_offset
    while blob[pos:pos + 4] == b"PK\x01\x02":
        cuts.update((pos, pos + 46))
        n, e, c = struct.unpack("<HHH", blob[pos + 28:pos + 34])
        pos += 46 + n + e + c
    cuts.update((pos, eocd, eocd + 10, eocd + 22))
    return sorted(c for c in cuts if 0 <= c < len(blob))


def zip_field_positions(blob):
    """Byte offsets of signatures, methods, CRCs, sizes, name lengths and offsets in every header."""
    positions = []
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            local = info.header_offset
            for field, width in ((0, 4), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2)):
                positions.extend(range(local + field, local + field + width))
    eocd = blob.rfind(b"PK\x05\x06")
    pos = struct.unpack("<I", blob[eocd + 16:eocd + 20])[0]
    while blob[pos:pos + 4] == b"PK\x01\x02":
        for field, width in ((0, 4), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (42, 4)):
            positions.extend(range(pos + field, pos + field + width))
        n, e, c = struct.unpack("<HHH", blob[pos + 28:pos + 34])
        pos += 46 + n + e + c
    for field, width in ((0, 4), (8, 2), (10, 2), (12, 4), (16, 4)):
        positions.extend(range(eocd + field, eocd + field + width))
    return positions


def stored_zip(records, method=zipfile.ZIP_STORED, repeat=None, top="archive/", folders=None):
    """A torch.save-shaped archive of the given records (name -> bytes) with correct CRCs; `repeat` names a record
    written a second time, `folders` gives some records another top folder than `top`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a repeated name
        for name in list(records) + ([repeat] if repeat else []):
            folder = (folders or {}).get(name, top)
            info = zipfile.ZipInfo(folder + name, date_time=(1980, 1, 1, 0, 0, 0))  # the same bytes every run
            z.writestr(info, records[name], compress_type=method)
    return out.getvalue()


def patch_directory_entry(blob, entry, field, value):
    """The archive with a field of central directory entry `entry` (not covered by any CRC) set to value's bytes."""
    eocd = blob.rfind(b"PK\x05\x06")
    pos = struct.unpack("<I", blob[eocd + 16:eocd + 20])[0]
    for _ in range(entry):
        n, e, c = struct.unpack("<HHH", blob[pos + 28:pos + 34])
        pos += 46 + n + e + c
    return blob[:pos + field] + value + blob[pos + field + len(value):]


def pickle_of(archive):
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return z.read("archive/data.pkl")


def pickle_bin(pickle_bytes, storages=4):
    records = {"data.pkl": pickle_bytes, "version": b"3\n"}
    for key in range(storages):
        records[f"data/{key}"] = bytes(64)
    return stored_zip(records)


def storage_pickle(name, dtype_global, key, numel, view_size, stride, offset=0, build=None):
    """A protocol-2 pickle of {name: tensor} as torch.save writes it, with the view fields in our hands."""
    p = bytearray(b"\x80\x02")
    p += b"ccollections\nOrderedDict\nq\x00)Rq\x01"
    p += b"X" + struct.pack("<I", len(name)) + name.encode()
    p += b"ctorch._utils\n_rebuild_tensor_v2\nq\x02("
    p += b"(X\x07\x00\x00\x00storageq\x03ctorch\n" + dtype_global.encode() + b"\nq\x04X" + struct.pack(
        "<I", len(key)) + key.encode() + b"X\x03\x00\x00\x00cpuq\x05J" + struct.pack("<i", numel) + b"tq\x06Q"
    p += b"J" + struct.pack("<i", offset)
    p += b"(" + b"".join(b"J" + struct.pack("<i", d) for d in view_size) + b"t"
    p += b"(" + b"".join(b"J" + struct.pack("<i", s) for s in stride) + b"t"
    p += b"\x89ccollections\nOrderedDict\nq\x07)Rq\x08tq\x09Rq\x0a"
    p += b"s"
    if build is not None:
        p += build
    p += b"."
    return bytes(p)


# ---------------------------------------------------------------------------------------------------------------


class Corpus:
    def __init__(self, out):
        self.out, self.rows, self.count = out, [], {}

    def add(self, source, name, blob, expect="", filename="model.safetensors"):
        """A single-file case: OUT/source/NNN-name/<filename>."""
        n = self.count[source] = self.count.get(source, 0) + 1
        folder = os.path.join(self.out, source, f"{n:03d}-{name}")
        os.makedirs(folder)
        with open(os.path.join(folder, filename), "wb") as f:
            f.write(blob)
        self.rows.append((os.path.relpath(os.path.join(folder, filename), self.out), source, expect))

    def add_dir(self, source, name, files, expect=""):
        """A directory case (an index beside its shards): OUT/source/NNN-name/."""
        n = self.count[source] = self.count.get(source, 0) + 1
        folder = os.path.join(self.out, source, f"{n:03d}-{name}")
        os.makedirs(folder)
        for filename, blob in files.items():
            with open(os.path.join(folder, filename), "wb") as f:
                f.write(blob)
        self.rows.append((os.path.relpath(folder, self.out), source, expect))

    def write_manifest(self):
        with open(os.path.join(self.out, "MANIFEST.tsv"), "w") as f:
            f.write("# case\tsource\texpected in the message\n")
            for row in self.rows:
                f.write("\t".join(row) + "\n")


def safetensors_rules(c, rng):
    t = base_tensors(rng)
    good = safetensors_bytes(t, {"format": "pt"})
    n = struct.unpack("<Q", good[:8])[0]
    header = good[8:8 + n].decode().rstrip(" ")
    data = good[8 + n:]

    def with_header(text):
        return struct.pack("<Q", len(text.encode())) + text.encode() + data

    f32 = lambda s: '{"a":{"dtype":"F32","shape":[1],"data_offsets":' + s + "}}"
    c.add("rule", "short-file", b"\x10\x00\x00", "too short")
    c.add("rule", "length-over-limit", struct.pack("<Q", 100_000_001) + b"{}", "limit")
    c.add("rule", "length-past-end", struct.pack("<Q", 4096) + b"{}", "past the end")
    c.add("rule", "not-an-object", with_header("[1,2]"), "start with")
    c.add("rule", "leading-space", with_header(" " + header), "start with")
    c.add("rule", "nul-then-garbage", with_header(header + "\x00THIS IS NOT JSON"), "")
    c.add("rule", "trailing-nuls", with_header(header + "\x00\x00\x00\x00"), "")
    c.add("rule", "trailing-newline-garbage", with_header(header + "\nx"), "")
    c.add("rule", "duplicate-key", with_header(header[:-1] + ',"ids":' + json.dumps(
        {"dtype": "I64", "shape": [3], "data_offsets": [72, 96]}) + "}"), "duplicate")
    c.add("rule", "unknown-dtype", with_header(header.replace('"F32"', '"F31"')), "unknown dtype")
    c.add("rule", "missing-dtype", with_header(header.replace('"dtype":"F32",', "")), "missing field")
    c.add("rule", "missing-shape", with_header(header.replace('"shape":[4,4],', "")), "missing field")
    c.add("rule", "missing-offsets", with_header(f32("[0,4]").replace(',"data_offsets":[0,4]', "")),
          "missing field")
    c.add("rule", "negative-dim", with_header(header.replace("[4,4]", "[-4,-4]")), "non-negative")
    c.add("rule", "float-dim", with_header(header.replace("[4,4]", "[4.0,4]")), "non-negative")
    c.add("rule", "string-dim", with_header(header.replace("[4,4]", '["4",4]')), "non-negative")
    c.add("rule", "shape-not-list", with_header(header.replace("[4,4]", "16")), "shape")
    c.add("rule", "shape-overflow", with_header(header.replace("[4,4]", "[4294967296,4294967296,16]")), "overflow")
    c.add("rule", "number-overflow", with_header(header.replace("[4,4]", "[1e400,4]")), "")
    c.add("rule", "million-digits", with_header(header.replace("[4,4]", "[" + "9" * 100_000 + ",4]")), "")
    c.add("rule", "offsets-three", with_header(header.replace("[0,64]", "[0,32,64]")), "data_offsets")
    c.add("rule", "offsets-reversed", with_header(header.replace("[0,64]", "[64,0]")), "data_offsets")
    c.add("rule", "offsets-wrong-size", with_header(header.replace("[0,64]", "[0,60]")), "bytes")
    gap = header.replace("[64,72]", "[72,80]").replace("[72,96]", "[80,104]").replace("[96,101]", "[104,109]")
    c.add("rule", "offsets-gap", struct.pack("<Q", len(gap)) + gap.encode() + data[:64] + bytes(8) + data[64:],
          "data starts at byte 72")
    c.add("rule", "offsets-overlap", with_header(header.replace("[72,96]", "[64,88]")), "data")
    c.add("rule", "offsets-past-end", safetensors_bytes(t, header=header.replace("[96,101]", "[96,1000101]")),
          "")
    c.add("rule", "trailing-data", good + b"\x00" * 8, "trailing")
    c.add("rule", "short-data", good[:-3], "")
    c.add("rule", "metadata-not-object", with_header(header.replace('{"format":"pt"}', "[1]")), "__metadata__")
    c.add("rule", "metadata-number-value", with_header(header.replace('"pt"', "1")), "__metadata__")
    c.add("rule", "entry-not-object", with_header('{"a":[1,2]}'), "")
    c.add("rule", "too-deep", with_header('{"__metadata__":' + "[" * 17 + '{"a":1}' + "]" * 17 + "}"), "")
    c.add("rule", "deep-object", with_header('{"a":' + '{"b":' * 20 + "1" + "}" * 21), "")
    c.add("rule", "invalid-utf8", with_header(header).replace(b"embed", b"emb\xffd"), "")
    c.add("rule", "control-char-in-name", with_header(header).replace(b"embed", b"emb\x01d"), "")
    c.add("rule", "bool-value-7", safetensors_bytes([("m", "BOOL", [2], b"\x00\x07")]), "BOOL")
    c.add("rule", "empty-header-object-with-data", safetensors_bytes([], header="{}      ") + b"\x01", "trailing")
    c.add("rule", "unclosed-string", with_header('{"a'), "")
    c.add("rule", "nan-literal", with_header(header.replace("[4,4]", "[NaN,4]")), "")
    return good


def safetensors_mutations(c, good):
    n = struct.unpack("<Q", good[:8])[0]
    text = good[8:8 + n].decode()
    for cut in [0, 1, 4, 7, 8] + [8 + b for b in json_boundaries(text)] + [8 + n, 8 + n + 1, len(good) - 1]:
        blob = good[:cut]
        if not safetensors_ok(blob):
            c.add("trunc", f"safetensors-at-{cut}", blob)
    for value in (0, 1, n - 1, n + 1, n + 8, 2**63, 2**64 - 1):
        blob = struct.pack("<Q", value) + good[8:]
        if not safetensors_ok(blob):
            c.add("flip", f"safetensors-length-{value}", blob)
    for pos in structural_positions(text):
        for bit in (0, 2, 5):
            blob = bytearray(good)
            blob[8 + pos] ^= 1 << bit
            if not safetensors_ok(bytes(blob)):
                c.add("flip", f"safetensors-byte{8 + pos}-bit{bit}", bytes(blob))


def index_files(good_shards, index):
    files = dict(good_shards)
    files["model.safetensors.index.json"] = index.encode() if isinstance(index, str) else index
    return files


def index_ok(files):
    try:
        index = strict_json(files["model.safetensors.index.json"].decode("utf-8"))
        if not isinstance(index, dict) or depth(index) > 16 or not isinstance(index.get("weight_map"), dict):
            return False
        weight_map = index["weight_map"]
        if not weight_map:
            return False
        metadata = index.get("metadata", {})
        if metadata is not None and not isinstance(metadata, dict):
            return False
        names = {}
        for shard in set(weight_map.values()):
            if not isinstance(shard, str) or shard not in files or not safetensors_ok(files[shard]):
                return False
            n = struct.unpack("<Q", files[shard][:8])[0]
            header = json.loads(files[shard][8:8 + n])
            for name, info in header.items():
                if name != "__metadata__":
                    names[name] = (shard, info["data_offsets"][1] - info["data_offsets"][0])
        if set(names) != set(weight_map) or any(names[k][0] != v for k, v in weight_map.items()):
            return False
        total = (metadata or {}).get("total_size")
        return total is None or total == sum(size for _, size in names.values())
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
        return False


def index_cases(c, rng):
    t = base_tensors(rng)
    shards = {"model-00001-of-00002.safetensors": safetensors_bytes(t[:2], {"format": "pt"}),
              "model-00002-of-00002.safetensors": safetensors_bytes(t[2:], {"format": "pt"})}
    weight_map = {name: ("model-00001-of-00002.safetensors" if i < 2 else "model-00002-of-00002.safetensors")
                  for i, (name, *_) in enumerate(t)}
    total = sum(len(x[3]) for x in t)
    good = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    assert index_ok(index_files(shards, good))
    rule = lambda name, text, expect="": c.add_dir("rule", "index-" + name, index_files(shards, text), expect)
    rule("empty-weight-map", '{"weight_map":{}}', "weight_map")
    rule("no-weight-map", '{"metadata":{}}', "weight_map")
    rule("weight-map-list", '{"weight_map":[]}', "weight_map")
    rule("nested-17", "[" * 17 + '{"a":1}' + "]" * 17, "")
    rule("total-size-overflow", good.replace(str(total), "1e400"), "")
    rule("total-size-string", good.replace(str(total), '"%d"' % total), "total_size")
    rule("total-size-wrong", good.replace(str(total), str(total + 1)), "total_size")
    rule("duplicate-key", good.replace('"ids"', '"embed.weight"'), "duplicate")
    rule("unknown-tensor", good.replace('"ids"', '"ghost"'), "")
    rule("missing-shard", good.replace("00002-of-00002", "00003-of-00002"), "")
    rule("dot-dot", good.replace('"model-00002-of-00002', '"../model-00002-of-00002'), "..")
    rule("absolute", good.replace('"model-00002-of-00002', '"/tmp/model-00002-of-00002'), "absolute")
    rule("shard-not-string", good.replace('"model-00002-of-00002.safetensors"', "2"), "")
    rule("nul-in-text", good + "\x00", "")
    rule("not-json", "weight_map: {}", "")
    rule("trailing-garbage", good + "}", "")
    broken = dict(shards)
    broken["model-00002-of-00002.safetensors"] = shards["model-00002-of-00002.safetensors"][:-1]
    c.add_dir("rule", "index-shard-truncated", index_files(broken, good), "model-00002-of-00002.safetensors")

    for cut in json_boundaries(good):
        files = index_files(shards, good[:cut])
        if not index_ok(files):
            c.add_dir("trunc", f"index-at-{cut}", files)
    for pos in structural_positions(good):
        for bit in (0, 3):
            blob = bytearray(good.encode())
            blob[pos] ^= 1 << bit
            files = index_files(shards, bytes(blob))
            if not index_ok(files):
                c.add_dir("flip", f"index-byte{pos}-bit{bit}", files)


def bin_cases(c, rng):
    good = base_bin()
    assert bin_ok(good)
    add = lambda source, name, blob, expect="": c.add(source, name, blob, expect, filename="pytorch_model.bin")
    for cut in zip_boundaries(good):
        if not bin_ok(good[:cut]):
            add("trunc", f"bin-at-{cut}", good[:cut])
    positions = zip_field_positions(good)
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        for info in z.infolist():
            local = info.header_offset
            name_len, extra_len = struct.unpack("<HH", good[local + 26:local + 30])
            data = local + 30 + name_len + extra_len
            if info.file_size:
                positions.extend(rng.sample(range(data, data + info.file_size), min(3, info.file_size)))
    for pos in positions:
        blob = bytearray(good)
        blob[pos] ^= 1 << rng.randrange(8)
        if not bin_ok(bytes(blob)):
            add("flip", f"bin-byte{pos}", bytes(blob))

    # Handcrafted: the crashing pickles and the pickle rules (docs/formats.md), each in a sound archive.
    pk = lambda name, pickle, expect="": add("rule", "pickle-" + name, pickle_bin(pickle), expect)
    pk("tuple1-on-mark", b"\x80\x02(\x85.")
    pk("reduce-on-marks", b"\x80\x02((R.")
    pk("binpersid-on-mark", b"\x80\x02(Q.")
    pk("stale-mark", b"\x80\x02(NN(\x86d.")
    pk("tuple2-bad-free", b"\x80\x02(N\x86.")
    pk("tuple1-deep", b"\x80\x02N" + b"\x85" * 100_000 + b".")
    pk("type-tag-deep", b"\x80\x02ctorch.jit._pickle\nrestore_type_tag\n}X" + struct.pack("<I", 25_000) +
       b"Dict[" * 5000 + b"\x86R.")
    pk("long-binput-huge", b"\x80\x02}r\xff\xff\xff\xff.", "memo")
    pk("os-system", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    pk("empty", b"")
    pk("no-stop", b"\x80\x02}")
    pk("protocol-5", b"\x80\x05}.")
    pk("odd-setitems", b"\x80\x02}(X\x01\x00\x00\x00a\x4es\x4eu.")
    pk("not-a-dict", b"\x80\x02].")
    pk("stride0-bomb", storage_pickle("w", "FloatStorage", "0", 1, [1 << 30], [0]), "")
    pk("storage-past-record", storage_pickle("w", "FloatStorage", "0", 1 << 20, [1 << 20], [1]), "")
    pk("view-past-storage", storage_pickle("w", "FloatStorage", "0", 4, [8], [1]), "")
    pk("negative-offset", storage_pickle("w", "FloatStorage", "0", 4, [4], [1], offset=-2), "")
    pk("unknown-storage", storage_pickle("w", "EvilStorage", "0", 4, [4], [1]), "")
    pk("missing-record", storage_pickle("w", "FloatStorage", "9", 4, [4], [1]), "")
    pk("reserved-name", storage_pickle("\x01shardcast-build-state", "FloatStorage", "0", 4, [4], [1]), "")
    pk("build-non-dict", storage_pickle("w", "FloatStorage", "0", 4, [4], [1], build=b"Kxb"), "")
    add("rule", "bool-value-7", stored_zip({"data.pkl": storage_pickle("m", "BoolStorage", "0", 4, [4], [1]),
                                             "version": b"3\n", "data/0": b"\x00\x07\x01\x00"}), "BOOL")
    records = {"data.pkl": storage_pickle("w", "FloatStorage", "0", 4, [4], [1]), "version": b"3\n",
               "data/0": bytes(16)}
    assert bin_ok(stored_zip(records)), "the handcrafted pickle is not what torch.save writes"
    add("rule", "zip-deflated-record", stored_zip(records, method=zipfile.ZIP_DEFLATED), "compress")
    add("rule", "zip-duplicate-name", stored_zip(records, repeat="data/0"), "")
    add("rule", "zip-not-zip", b"PK\x03\x04" + bytes(60), "")
    # Zip fields outside every CRC, and records LibTorch's reader would fail on while opening (it leaks then).
    sound = stored_zip(records)
    add("rule", "zip-encrypted-flag", patch_directory_entry(sound, 2, 8, b"\x01\x00"), "encrypted")
    add("rule", "zip-other-disk", patch_directory_entry(sound, 2, 34, b"\x01\x00"), "another disk")
    add("rule", "zip-directory-attribute", patch_directory_entry(sound, 2, 38, b"\x10\x00\x00\x00"), "directory")
    add("rule", "zip-case-twin", stored_zip(dict(records, **{"DATA/0": bytes(16)})), "twice")
    add("rule", "zip-no-top-folder", stored_zip(records, top=""), "top folder")
    add("rule", "zip-nul-in-name", stored_zip(records, top="arcXhive/").replace(b"arcXhive/", b"arc\0hive/"),
        "cannot look up")  # zipfile cuts a name at NUL: patched in afterwards
    add("rule", "zip-record-outside-top", stored_zip(records, folders={"data/0": "other/"}), "outside")
    add("rule", "version-not-a-number", stored_zip(dict(records, version=b"x\n")), "version")
    add("rule", "version-too-new", stored_zip(dict(records, version=b"99\n")), "version")
    add("rule", "version-too-long", stored_zip(dict(records, version=b"3" + b" " * 70)), "version")
    add("rule", "version-missing", stored_zip({k: v for k, v in records.items() if k != "version"}), "version")
    add("rule", "legacy-pickle", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    rng = random.Random(13)
    c = Corpus(out)
    good = safetensors_rules(c, rng)
    assert safetensors_ok(good)
    safetensors_mutations(c, good)
    index_cases(c, rng)
    bin_cases(c, rng)
    c.write_manifest()
    by_source = {}
    for _, source, _ in c.rows:
        by_source[source] = by_source.get(source, 0) + 1
    print(f"make_malformed.py: {len(c.rows)} cases in {out} ({', '.join(f'{k} {v}' for k, v in by_source.items())})")


if __name__ == "__main__":
    main()
