"""Fixtures of the Python suite: reference checkpoints, a launcher for multi-rank scripts, and the check that every
test leaves /dev/shm as it found it."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import reference  # noqa: E402

RANKS_DIR = Path(__file__).parent / "ranks"
SHARDCAST_RUN = os.environ.get("SHARDCAST_RUN", "shardcast-run")


def shm_segments() -> List[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("shardcast-"))


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    before = shm_segments()
    yield
    left = [n for n in shm_segments() if n not in before]
    assert not left, f"the test left shared memory segments behind: {left}"


def model_tensors() -> Dict[str, torch.Tensor]:
    """A small transformer's worth of tensors, in several dtypes, with a tied lm_head absent from the file."""
    g = torch.Generator().manual_seed(7)
    return {
        "embed.weight": torch.randn(64, 16, generator=g),
        "layers.0.attn.weight": torch.randn(48, 16, generator=g).to(torch.bfloat16),
        "layers.0.attn.bias": torch.randn(48, generator=g).to(torch.float16),
        "layers.0.norm.weight": torch.ones(16, dtype=torch.float64),
        "layers.1.attn.weight": torch.randn(48, 16, generator=g).to(torch.bfloat16),
        "layers.1.attn.bias": torch.randn(48, generator=g).to(torch.float16),
        "layers.1.norm.weight": torch.ones(16, dtype=torch.float64),
        "position_ids": torch.arange(32, dtype=torch.int64),
        "mask": torch.rand(8, generator=g) > 0.5,
        "codes": torch.randint(0, 255, (8,), generator=g, dtype=torch.uint8),
    }


def split_shards(tensors: Dict[str, torch.Tensor], ext: str) -> Dict[str, Dict[str, torch.Tensor]]:
    names = list(tensors)
    half = len(names) // 2
    return {f"model-00001-of-00002.{ext}": {n: tensors[n] for n in names[:half]},
            f"model-00002-of-00002.{ext}": {n: tensors[n] for n in names[half:]}}


@pytest.fixture(scope="session")
def tensors() -> Dict[str, torch.Tensor]:
    return model_tensors()


@pytest.fixture(scope="session")
def safetensors_ckpt(tmp_path_factory, tensors) -> Path:
    d = tmp_path_factory.mktemp("st")
    reference.write_sharded(d, split_shards(tensors, "safetensors"))
    return d


@pytest.fixture(scope="session")
def bin_ckpt(tmp_path_factory, tensors) -> Path:
    d = tmp_path_factory.mktemp("bin")
    reference.write_sharded(d, split_shards(tensors, "bin"), fmt="bin")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).parent), env.get("PYTHONPATH", "")] if p)
    env.update(extra or {})
    return env


def run_ranks(n: int, script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs tests/python/ranks/<script> on n ranks under shardcast-run; the output of every rank, prefixed."""
    command = [SHARDCAST_RUN, "--standalone", "-n", str(n), sys.executable, str(RANKS_DIR / script), *map(str, args)]
    return subprocess.run(command, env=rank_env(), capture_output=True, text=True, timeout=timeout)


def spawn_ranks(n: int, script: str, *args: str) -> List[subprocess.Popen]:
    """n ranks of a torchrun-style job started directly (no supervisor stops the others when one dies)."""
    port = free_port()
    procs = []
    for r in range(n):
        env = rank_env({"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_RUN_ID": f"pytest{port}"})
        procs.append(subprocess.Popen([sys.executable, str(RANKS_DIR / script), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs
