"""shardcast.load in a job of one: every placement and dtype, bit-exact against what was written, zero-copy views
that keep their mapping alive, and errors as the right exception naming the file or tensor."""

import datetime
import gc
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import reference
import shardcast

HOST_PLACEMENTS = ["shared", "cow", "private"]


def mapped_segments():
    # A segment is an unnamed file in /dev/shm: the kernel shows "/dev/shm/#<inode> (deleted)" (O_TMPFILE), or the
    # random name it had for a moment where O_TMPFILE is missing.
    with open("/proc/self/maps") as f:
        return [line for line in f if re.search(r"/dev/shm/(#\d+|shardcast-\S+) \(deleted\)$", line)]


def mapped_files(directory):
    """This process's mappings of files in `directory` (the checkpoint, under map_files "auto")."""
    with open("/proc/self/maps") as f:
        return [line for line in f if f" {directory}/" in line]


@pytest.mark.parametrize("placement", HOST_PLACEMENTS)
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_every_placement_loads_bit_exact_tensors(placement, fmt, tensors, safetensors_ckpt, bin_ckpt):
    ckpt = safetensors_ckpt if fmt == "safetensors" else bin_ckpt
    sd = shardcast.load(ckpt, placement=placement)
    assert sorted(sd) == sorted(tensors)
    for name, want in tensors.items():
        assert reference.bit_equal(sd[name], want), name


@pytest.mark.parametrize("placement", HOST_PLACEMENTS)
@pytest.mark.parametrize("dtype", ["keep", "bf16"])
def test_tied_bin_weights_stay_one_tensor_as_torch_load_returns_them(tmp_path, placement, dtype):
    embed = torch.randn(64, 8)
    torch.save({"embed.weight": embed, "head.weight": embed, "norm": torch.ones(8)}, tmp_path / "pytorch_model.bin")
    sd = shardcast.load(tmp_path, placement=placement, dtype=dtype)
    want = embed if dtype == "keep" else embed.to(torch.bfloat16)
    assert reference.bit_equal(sd["head.weight"], want)
    assert reference.bit_equal(sd["norm"], torch.ones(8, dtype=want.dtype))
    assert sd["embed.weight"].data_ptr() == sd["head.weight"].data_ptr(), "the tie came apart"


@pytest.mark.parametrize("placement", ["shared", "cow"])
def test_separate_parameters_loaded_from_a_tied_bin_stay_separate(tmp_path, placement):
    embed = torch.randn(64, 8)
    torch.save({"embed.weight": embed, "head.weight": embed}, tmp_path / "pytorch_model.bin")
    model = torch.nn.Module()
    model.embed = torch.nn.Module()
    model.head = torch.nn.Module()
    model.embed.weight = torch.nn.Parameter(torch.zeros(64, 8))
    model.head.weight = torch.nn.Parameter(torch.zeros(64, 8))  # not tied in the model
    shardcast.load_into(model, tmp_path, placement=placement)
    assert reference.bit_equal(model.embed.weight.detach(), embed)
    assert reference.bit_equal(model.head.weight.detach(), embed)
    assert model.embed.weight.data_ptr() != model.head.weight.data_ptr(), "two parameters came to share memory"


@pytest.mark.parametrize("dtype", ["bf16", torch.float16, "f32", torch.float64])
def test_dtype_converts_floats_as_torch_rounds_and_keeps_the_rest(dtype, tensors, safetensors_ckpt):
    target = {"bf16": torch.bfloat16, "f32": torch.float32}.get(dtype, dtype)
    sd = shardcast.load(safetensors_ckpt, dtype=dtype, placement="private")
    for name, want in tensors.items():
        expected = want.to(target) if want.is_floating_point() else want
        assert reference.bit_equal(sd[name], expected), name


def test_tensor_selection_loads_only_the_named_tensors(safetensors_ckpt, tensors):
    sd = shardcast.load(safetensors_ckpt, tensors=["layers.1.*", "embed.weight"])
    assert sorted(sd) == sorted(n for n in tensors if n.startswith("layers.1.") or n == "embed.weight")


def test_tensor_parallel_rules_give_this_ranks_slice(safetensors_ckpt, tensors):
    sd = shardcast.load(safetensors_ckpt, tp_size=1, tp_rules={"*.attn.weight": 0})
    assert reference.bit_equal(sd["layers.0.attn.weight"], tensors["layers.0.attn.weight"])


@pytest.mark.parametrize("map_files", ["auto", "never"])
def test_shared_and_cow_tensors_are_views_of_the_mapping(safetensors_ckpt, map_files):
    # auto: views of the checkpoint files themselves (the page cache); never: of the node's staged segments.
    mappings = (lambda: mapped_files(safetensors_ckpt)) if map_files == "auto" else mapped_segments
    for placement in ["shared", "cow"]:
        sd = shardcast.load(safetensors_ckpt, placement=placement, map_files=map_files)
        assert mappings(), f"nothing is mapped while its views live ({map_files})"
        assert bool(mapped_segments()) == (map_files == "never")
        sources = set(shardcast.last_stats()["sources"].values())
        assert sources == ({"mapped"} if map_files == "auto" else {"staged (mapping off)"}), sources
        del sd
        gc.collect()
        assert not mappings(), "the mapping stayed after its tensors died"


@pytest.mark.parametrize("map_files", ["auto", "never"])
def test_a_view_of_a_view_keeps_the_mapping_alive_after_del_state_dict(safetensors_ckpt, tensors, map_files):
    mappings = (lambda: mapped_files(safetensors_ckpt)) if map_files == "auto" else mapped_segments
    sd = shardcast.load(safetensors_ckpt, placement="shared", map_files=map_files)
    row = sd["embed.weight"][3]
    del sd
    gc.collect()
    assert mappings()
    assert torch.equal(row, tensors["embed.weight"][3])
    del row
    gc.collect()
    assert not mappings()


def test_map_files_is_checked():
    with pytest.raises(ValueError, match="map_files='sometimes'"):
        shardcast.load("/nonexistent", map_files="sometimes")


@pytest.mark.parametrize("keep_for", [60, "1m", datetime.timedelta(minutes=1)])
def test_keep_for_keeps_the_staged_copy_for_the_next_load_and_says_so(tmp_path, safetensors_ckpt, tensors, keep_for):
    shm = tmp_path / "shm"
    shm.mkdir()
    first = shardcast.load(safetensors_ckpt, map_files="never", keep_for=keep_for, shm_dir=shm)
    kept = shardcast.last_stats()["kept"]
    assert kept["state"] == "kept" and len(kept["key"]) == 32
    assert kept["expires_unix"] >= time.time() + 55
    del first
    gc.collect()
    again = shardcast.load(safetensors_ckpt, placement="cow", map_files="never", shm_dir=shm)
    stats = shardcast.last_stats()
    assert stats["kept"]["state"] == "reused" and stats["kept"]["key"] == kept["key"]
    assert stats["rank_bytes_staged"] == 0
    for name, want in tensors.items():
        assert reference.bit_equal(again[name], want), name
    del again
    gc.collect()
    subprocess.run([os.environ.get("SHARDCAST_CLI", "shardcast"), "gc", "--kept", "--shm-dir", str(shm)], check=True,
                   capture_output=True)
    assert not list(shm.iterdir())


def test_keep_for_is_checked(safetensors_ckpt):
    for bad in ["ten minutes", -1, [1]]:
        with pytest.raises(ValueError, match="keep_for|duration"):
            shardcast.load(safetensors_ckpt, keep_for=bad)


def test_private_tensors_do_not_map_segments(safetensors_ckpt):
    sd = shardcast.load(safetensors_ckpt, placement="private")
    assert not mapped_segments() and not mapped_files(safetensors_ckpt)
    sd["embed.weight"].add_(1)  # its own memory


def test_cow_tensors_are_writable_and_writes_stay_in_the_tensor(safetensors_ckpt, tensors):
    a = shardcast.load(safetensors_ckpt, placement="cow")
    a["embed.weight"].fill_(3)
    b = shardcast.load(safetensors_ckpt, placement="cow")
    assert torch.equal(b["embed.weight"], tensors["embed.weight"])


@pytest.mark.parametrize("map_files", ["auto", "never"])
def test_writing_to_a_shared_tensor_faults_with_a_message(safetensors_ckpt, map_files):
    code = (f"import shardcast, sys; sd = shardcast.load(sys.argv[1], placement='shared', map_files='{map_files}'); "
            "sd['embed.weight'].add_(1); print('wrote')")
    result = subprocess.run([sys.executable, "-c", code, str(safetensors_ckpt)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == -signal.SIGSEGV, result
    assert "wrote" not in result.stdout
    assert "read-only" in result.stderr and "placement" in result.stderr, result.stderr
    where = (r"checkpoint file '.*\.safetensors'" if map_files == "auto" else
             r"segment s\d+ of load 0 on node 0 \(job .*\)")
    assert re.search(rf"\({where}, byte \d+ of the mapping\)", result.stderr), result.stderr


def test_checkpoint_errors_name_the_file(tmp_path, safetensors_ckpt):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(shardcast.CheckpointError, match="model.safetensors"):
        shardcast.load(bad)
    with pytest.raises(shardcast.CheckpointError, match="model.safetensors"):
        shardcast.inspect(bad)
    report = shardcast.verify(bad)
    assert not report["ok"] and any("model.safetensors" in p for p in report["problems"])


def test_a_truncated_shard_is_a_checkpoint_error_naming_the_shard(tmp_path, tensors):
    d = tmp_path / "trunc"
    reference.write_sharded(d, {"model-00001-of-00001.safetensors": tensors})
    f = d / "model-00001-of-00001.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(shardcast.CheckpointError, match="model-00001-of-00001.safetensors"):
        shardcast.load(d)


def test_bad_arguments_raise_value_error(safetensors_ckpt, tmp_path):
    with pytest.raises(ValueError, match="placement"):
        shardcast.load(safetensors_ckpt, placement="everywhere")
    with pytest.raises(ValueError, match="bogus"):
        shardcast.load(safetensors_ckpt, dtype="bogus")
    with pytest.raises(ValueError, match="does not exist"):
        shardcast.load(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="tp_size"):
        shardcast.load(safetensors_ckpt, tp_size=0)
    with pytest.raises(ValueError, match="does not divide"):
        shardcast.load(safetensors_ckpt, tp_size=2)


def test_placement_cuda_without_a_gpu_says_why(safetensors_ckpt):
    if torch.cuda.is_available():
        sd = shardcast.load(safetensors_ckpt, placement="cuda")
        assert all(t.device.type == "cuda" for t in sd.values())
        return
    with pytest.raises((ValueError, shardcast.DeviceError), match="(?i)cuda|device|gpu"):
        shardcast.load(safetensors_ckpt, placement="cuda")


def test_inspect_and_info(safetensors_ckpt, tensors):
    summary = shardcast.inspect(safetensors_ckpt)
    assert summary["format"] == "safetensors"
    assert summary["tensor_count"] == len(tensors)
    assert len(summary["shards"]) == 2
    assert shardcast.verify(safetensors_ckpt)["ok"]
    info = shardcast.info()
    assert info["version"] == shardcast.__version__
    assert info["torch"].split(".")[:2] == torch.__version__.split(".")[:2]
    assert "store" in info["communicators"] and "self" in info["communicators"]


def test_save_sharded_round_trips_in_both_formats(tmp_path, tensors):
    for safe in [True, False]:
        out = tmp_path / f"saved-{safe}"
        files = shardcast.save_sharded(tensors, out, max_shard_size="1KB", safe_serialization=safe)
        index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
        assert any(f.endswith(index) for f in files) and len(files) > 2
        sd = shardcast.load(out, placement="private")
        for name, want in tensors.items():
            assert reference.bit_equal(sd[name], want), name
    # torch reads what safe_serialization=False wrote
    sd = {}
    for f in sorted((tmp_path / "saved-False").glob("*.bin")):
        sd.update(torch.load(f))
    assert all(reference.bit_equal(sd[n], t) for n, t in tensors.items())


def test_import_opens_nothing():
    # Under an mpirun environment, importing must neither initialise MPI nor open a socket: both would show as
    # socket descriptors or extra threads.
    code = ("import os, threading\n"
            "def sockets():\n"
            "    links = []\n"
            "    for fd in os.listdir('/proc/self/fd'):\n"
            "        try: links.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
            "        except FileNotFoundError: pass  # the listing's own descriptor\n"
            "    return sum(link.startswith('socket:') for link in links)\n"
            "import torch\n"
            "before = (sockets(), len(os.listdir('/proc/self/task')))\n"
            "import shardcast\n"
            "after = (sockets(), len(os.listdir('/proc/self/task')))\n"
            "assert before == after, (before, after)\n")
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_LOCAL_RANK="0")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_progress_bar_counts_bytes_when_asked_and_is_silent_otherwise(safetensors_ckpt):
    code = "import shardcast, sys; shardcast.load(sys.argv[1], verbose=sys.argv[2] == 'yes', placement='private')"
    shown = subprocess.run([sys.executable, "-c", code, str(safetensors_ckpt), "yes"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    last = shown.stderr.strip().split("\r")[-1]
    assert "shardcast: loading [##############################]" in last and " GB" in last, shown.stderr
    quiet = subprocess.run([sys.executable, "-c", code, str(safetensors_ckpt), "no"], capture_output=True, text=True,
                           timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
