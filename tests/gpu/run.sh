#!/usr/bin/env bash
# GPU checks for placement cuda, on a machine with an NVIDIA GPU, CUDA + NCCL and PyTorch (whose LibTorch has CUDA;
# Debian's is CPU-only), plus the packages scripts/setup installs:
#   1. builds shardcast with SHARDCAST_WITH_CUDA=ON against PyTorch's LibTorch, in build-gpu/;
#   2. runs the placement-cuda tests on cuda:0 (SHARDCAST_TEST_DEVICE=cuda): bit-exact digests against the CPU load,
#      every dtype cast on the device, tensor-parallel slices; NCCL paths with one rank (NCCL refuses two ranks on one
#      GPU, so multi-rank collectives are skipped unless there is a GPU per rank);
#   2b. builds the Python package against that torch and loads a checkpoint to cuda from Python, bit-exact against
#      the CPU load (tests/gpu/python_cuda_check.py);
#   3. runs shardcast-bench gpu: the pinned H2D ceiling measured here, and the ring's bytes/s as a fraction of it,
#      with the peak of node shared memory against the ring's size, on a multi-GB checkpoint.
# Usage: tests/gpu/run.sh [CHECKPOINT_SIZE (default 4GB)] ; results in build-gpu/gpu-bench.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
size=${1:-4GB}

if ! nvidia-smi -L; then
  echo "tests/gpu/run.sh: no NVIDIA GPU visible (nvidia-smi failed)" >&2
  exit 77
fi
python=${PYTHON:-python3}
torch_prefix=$("$python" -c 'import torch; assert torch.cuda.is_available(); print(torch.utils.cmake_prefix_path)')
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B build-gpu "${generator[@]}" -DSHARDCAST_WITH_CUDA=ON -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DSHARDCAST_PYTHON="$(command -v "$python")" -DPython3_EXECUTABLE="$(command -v "$python")" -DSHARDCAST_WITH_PYTHON=ON
cmake --build build-gpu --parallel "$(nproc)"

build-gpu/tools/shardcast info
SHARDCAST_TEST_DEVICE=cuda build-gpu/tests/test_worker --gtest_filter='*Device*'
rm -rf build-gpu/python-check && build-gpu/tools/shardcast synth build-gpu/python-check --size 64MB --dtypes torch
PYTHONPATH=build-gpu/python "$python" tests/gpu/python_cuda_check.py build-gpu/python-check

(cd build-gpu && tools/shardcast-bench gpu --size "$size" --out gpu-bench)
