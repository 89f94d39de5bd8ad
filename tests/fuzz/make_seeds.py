#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/, committed): sound files of each kind, and
every input the audit of issue 13 found crashing or hanging shardcast, as regressions. Files named found-* are the
fuzzers' own findings, copied in by hand when fixed; they stay.

usage: /usr/bin/python3 tests/fuzz/make_seeds.py   (needs PyTorch; reuses tests/corpus/make_malformed.py's makers)
"""

import io
import os
import random
import struct
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "corpus"))
import make_malformed as m  # noqa: E402


MAX_LEN = 65536  # the fuzz targets' -max_len (tests/fuzz/CMakeLists.txt): longer seeds would be cut anyway


class Seeds:
    def __init__(self, kind):
        self.dir = os.path.join(HERE, "corpus", kind)
        os.makedirs(self.dir, exist_ok=True)
        for old in os.listdir(self.dir):
            if not old.startswith("found-"):  # the fuzzers' findings, added by hand, stay
                os.remove(os.path.join(self.dir, old))

    def add(self, name, blob):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(blob[:MAX_LEN])


class Collect(m.Corpus):
    """make_malformed's handcrafted cases, kept in memory: (file name, case name) -> the bytes of that file."""

    def __init__(self):
        self.cases = {}

    def add(self, source, name, blob, expect="", filename="model.safetensors"):
        if source == "rule":
            self.cases[(filename, name)] = blob

    def add_dir(self, source, name, files, expect=""):
        if source == "rule":
            self.cases[("index", name)] = files["model.safetensors.index.json"]


def main():
    rng = random.Random(13)
    rules = Collect()
    good = m.safetensors_rules(rules, rng)
    m.index_cases(rules, rng)
    m.bin_cases(rules, rng)
    of = lambda filename: {name: blob for (f, name), blob in rules.cases.items() if f == filename}

    seeds = Seeds("safetensors")
    seeds.add("sound", good)
    seeds.add("sound-empty", m.safetensors_bytes([], {"format": "pt"}))
    for name, blob in of("model.safetensors").items():
        seeds.add(name, blob)
    digits = '{"a":{"dtype":"F32","shape":[' + "9" * 20000 + '],"data_offsets":[0,4]}}'
    seeds.add("million-digits", struct.pack("<Q", len(digits)) + digits.encode() + bytes(4))  # whole, under MAX_LEN

    # fuzz_index's shards hold a, b (first) and c, d (second): the rule cases' names and total are mapped onto them.
    seeds = Seeds("index")
    weight_map = {name: ("model-00001-of-00002.safetensors" if name in ("a", "b") else
                         "model-00002-of-00002.safetensors") for name in ("a", "b", "c", "d")}
    seeds.add("sound", m.json.dumps({"metadata": {"total_size": 27}, "weight_map": weight_map}, indent=2).encode())
    seeds.add("sound-no-metadata", m.json.dumps({"weight_map": weight_map}).encode())
    renames = {b'"embed.weight"': b'"a"', b'"norm.bias"': b'"b"', b'"ids"': b'"c"', b'"mask"': b'"d"',
               b'"total_size": 101': b'"total_size": 27'}
    for name, blob in of("index").items():
        for old, new in renames.items():
            blob = blob.replace(old, new)
        seeds.add(name, blob)

    bin_blob = m.base_bin()
    bins = of("pytorch_model.bin")
    seeds = Seeds("torch_bin")
    seeds.add("sound", bin_blob)
    for name, blob in bins.items():
        if not name.startswith("pickle-"):
            seeds.add(name, blob)

    seeds = Seeds("pickle")
    with zipfile.ZipFile(io.BytesIO(bin_blob)) as z:
        seeds.add("sound", z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0]))
    seeds.add("sound-one-tensor", m.storage_pickle("w", "FloatStorage", "0", 4, [4], [1]))
    for name, blob in bins.items():
        if name.startswith("pickle-"):
            pickle = m.pickle_of(blob)
            seeds.add(name, pickle if len(pickle) <= MAX_LEN else pickle[:MAX_LEN - 1] + b".")
    for kind in ("safetensors", "index", "torch_bin", "pickle"):
        print(kind, len(os.listdir(os.path.join(HERE, "corpus", kind))))


if __name__ == "__main__":
    main()
