#!/usr/bin/env bash
# The GPU check: one call on a machine with an NVIDIA GPU and PyTorch (its LibTorch has CUDA; Debian's is CPU-only).
# Everything else it needs comes from .gpu-bundle/ (tests/gpu/bundle.sh, run beforehand where Debian's packages can be
# downloaded), unpacked into a prefix of its own. docs/gpu.md shows the exact device call. Stages, each with a deadline
# inside a fixed budget, in order of what matters most:
#   facts      GPU, driver, CUDA, torch, NCCL, compiler versions; where NCCL's header and library are
#   unpack     dpkg -x the bundle into build-gpu/deps (never into /)
#   configure  CMake against PyTorch's LibTorch + the bundle, SHARDCAST_WITH_CUDA=ON, SHARDCAST_WITH_MPI=OFF
#   build      the CLI, shardcast-bench, the device tests and the Python package (ninja -k 0: every error at once)
#   device     the placement-cuda tests on cuda:0 (SHARDCAST_TEST_DEVICE=cuda): bit-exact against the CPU load in
#              every dtype this LibTorch holds, device casts, tensor-parallel slices, .bin, load_into, one-rank NCCL
#              broadcast and scatter, a bad device index, nothing left in /dev/shm
#   python     `import shardcast` built against this torch loads to cuda, bit-exact (tests/gpu/python_cuda_check.py)
#   synth      the benchmark checkpoint (default 8GB) on disk
#   bench      shardcast-bench gpu: the pinned H2D ceiling, rings' GB/s as a fraction of it, peak shared memory
#   peers      shardcast against safetensors load_file(device=cuda) and safe_open + .to(cuda), warm and cold cache
#   rest       the remaining targets and the CPU test suite without MPI, if time is left
#   shm        nothing of shardcast's left in /dev/shm
# Usage: tests/gpu/run.sh [CHECKPOINT_SIZE (8GB)]. SHARDCAST_GPU_BUDGET: seconds for the whole script (420).
# SHARDCAST_GPU_SKIP: stages not to run, e.g. "python peers" for a rerun that needs only the others.
# Logs and results go to $OUT when set (the device tool brings that folder back), else build-gpu/out: summary.md,
# logs.tar.gz (every stage's log), gpu-bench.{json,md}, peers.{json,md}, facts.txt. Without a GPU it stops after the
# configure with exit 77 (so the bundle and the configure can be checked anywhere).
set -uo pipefail
cd "$(dirname "$0")/../.."
size=${1:-8GB}
budget=${SHARDCAST_GPU_BUDGET:-420}
out=${OUT:-build-gpu/out}
logs=build-gpu/logs
deps=$PWD/build-gpu/deps
mkdir -p "$out" "$logs"
summary=$out/summary.md
started=$SECONDS
printf '| stage | result | seconds |\n|---|---|---|\n' >"$summary"

# stage NAME MAX_SECONDS COMMAND...: runs COMMAND (a program, or a function of this script exported with export -f)
# with its output in $logs/NAME.log, stopped with everything it started at MAX_SECONDS or at the budget's end,
# whichever comes first; records the outcome in summary.md and shows the end of a failing log.
stage() {
  local name=$1 max=$2
  shift 2
  if [[ " ${SHARDCAST_GPU_SKIP:-} " == *" $name "* ]]; then
    echo "| $name | skipped (SHARDCAST_GPU_SKIP) |  |" >>"$summary"
    echo "== $name: skipped"
    return 0
  fi
  local left=$((budget - (SECONDS - started)))
  if [ "$left" -lt 10 ]; then
    echo "| $name | not run: the budget of $budget s is spent |  |" >>"$summary"
    echo "== $name: not run (budget spent)"
    return 1
  fi
  [ "$max" -gt "$left" ] && max=$left
  local begin=$SECONDS rc
  echo "== $name (deadline $max s)"
  if [ "$(type -t "$1")" = function ]; then
    timeout --kill-after=10 "$max" bash -c 'set -o pipefail; "$@"' stage "$@" >"$logs/$name.log" 2>&1
  else
    timeout --kill-after=10 "$max" "$@" >"$logs/$name.log" 2>&1
  fi
  rc=$?
  local took=$((SECONDS - begin)) result=passed
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    result="stopped at its deadline ($max s)"
  elif [ "$rc" -ne 0 ]; then
    result="failed (exit $rc)"
  fi
  echo "| $name | $result | $took |" >>"$summary"
  echo "== $name: $result in $took s"
  if [ "$rc" -ne 0 ]; then
    if [ "$name" = build ]; then
      grep -E 'error|Error|undefined reference' "$logs/$name.log" | grep -v '^ninja: build stopped' | head -n 60
    else
      tail -n 40 "$logs/$name.log"
    fi
  fi
  return "$rc"
}

finish() {
  tar -czf "$out/logs.tar.gz" -C build-gpu logs 2>/dev/null
  echo
  cat "$summary"
  echo "total $((SECONDS - started)) s; results in $out"
}
trap finish EXIT

python=${PYTHON:-python3}
have_gpu=1
nvidia-smi -L >/dev/null 2>&1 || have_gpu=0
export python have_gpu deps size out

facts() {
  [ "$have_gpu" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv
  "$python" - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
          "nccl", ".".join(map(str, torch.cuda.nccl.version())))
PY
  nvcc --version | tail -n 2
  g++ --version | head -n 1
  cmake --version | head -n 1
  grep PRETTY_NAME /etc/os-release
  nproc
  grep MemTotal /proc/meminfo
  df -h "$PWD" /dev/shm | tail -n 2
}
export -f facts
stage facts 60 facts
cp "$logs/facts.log" "$out/facts.txt"

torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
# NCCL: the CUDA toolkit's, else the one PyTorch's wheel brings (nvidia-nccl-*: nccl.h and libnccl.so.2, no libnccl.so).
nccl_args=()
if [ ! -e /usr/local/cuda/include/nccl.h ] && [ ! -e /usr/include/nccl.h ]; then
  site=$("$python" -c 'import site; print(" ".join(site.getsitepackages()))')
  nccl_h=$(find $site -path '*nvidia*' -name nccl.h 2>/dev/null | head -n 1)
  nccl_so=$(find $site -path '*nvidia*' -name 'libnccl.so*' 2>/dev/null | head -n 1)
  [ -n "$nccl_h" ] && [ -n "$nccl_so" ] && nccl_args=(-DNCCL_INCLUDE_DIR="$(dirname "$nccl_h")" -DNCCL_LIBRARY="$nccl_so")
fi
echo "nccl: ${nccl_args[*]:-from the CUDA toolkit}" >>"$out/facts.txt"

unpack() {
  if ! ls .gpu-bundle/*.deb >/dev/null 2>&1; then
    echo "no .gpu-bundle/*.deb: run tests/gpu/bundle.sh where Debian's packages can be downloaded, and name" \
      ".gpu-bundle in the device call's carry" >&2
    return 1
  fi
  rm -rf "$deps"
  mkdir -p "$deps"
  for deb in .gpu-bundle/*.deb; do
    dpkg -x "$deb" "$deps" || return 1
  done
  ls .gpu-bundle
}
export -f unpack
stage unpack 60 unpack

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# OpenSSL's Debian headers keep configuration.h under the multiarch directory, which only /usr's compiler searches.
stage configure 120 cmake -S . -B build-gpu "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -DOPENSSL_ROOT_DIR="$deps/usr" \
  -DCMAKE_CXX_FLAGS="-isystem $deps/usr/include/x86_64-linux-gnu" \
  -DSHARDCAST_WITH_CUDA=ON -DSHARDCAST_WITH_MPI=OFF -DSHARDCAST_WITH_PYTHON=AUTO \
  -DSHARDCAST_PYTHON="$(command -v "$python")" -DPython3_EXECUTABLE="$(command -v "$python")" "${nccl_args[@]}"

if [ "$have_gpu" = 0 ]; then
  echo "tests/gpu/run.sh: no NVIDIA GPU visible (nvidia-smi failed): stopping after the configure" >&2
  echo "| device | no GPU: nvidia-smi failed |  |" >>"$summary"
  exit 77
fi

keep_going=""
[ ${#generator[@]} -gt 0 ] && keep_going="-- -k 0"  # ninja: build what it can, report every error
export keep_going
targets=(shardcast shardcast-run shardcast-bench test_worker)
grep -q '^SHARDCAST_PYTHON_INSTALL_DIR' build-gpu/CMakeCache.txt 2>/dev/null && targets+=(_shardcast)
# shellcheck disable=SC2086
stage build 300 cmake --build build-gpu --parallel "$(nproc)" --target "${targets[@]}" $keep_going

stage device 150 env SHARDCAST_TEST_DEVICE=cuda build-gpu/tests/test_worker --gtest_filter='*Device*'
build-gpu/tools/shardcast info >>"$out/facts.txt" 2>&1
# Which libstdc++ answers std::filesystem calls (a pip LibTorch exports its own copy: pytorch/pytorch#133437).
torch_cpu=$(find "$torch_prefix/../.." -name 'libtorch_cpu.so' 2>/dev/null | head -n 1)
[ -n "$torch_cpu" ] && echo "std::filesystem symbols exported by $torch_cpu:" \
  "$(nm -D --defined-only "$torch_cpu" 2>/dev/null | grep -c _ZNSt10filesystem)" >>"$out/facts.txt"
LD_BIND_NOW=1 LD_DEBUG=bindings build-gpu/tests/test_worker --gtest_list_tests 2>&1 | grep -m 3 'test_worker .*_ZNSt10filesystem' >>"$out/facts.txt"

python_check() {
  rm -rf build-gpu/python-check
  build-gpu/tools/shardcast synth build-gpu/python-check --size 64MB --dtypes torch &&
    PYTHONPATH=build-gpu/python "$python" tests/gpu/python_cuda_check.py build-gpu/python-check
}
export -f python_check
if [ -d build-gpu/python/shardcast ]; then
  stage python 90 python_check
else
  echo "| python | not built: see configure.log (SHARDCAST_WITH_PYTHON=AUTO) |  |" >>"$summary"
fi

checkpoint=build-gpu/bench-$size
export checkpoint
synth() {
  [ -f "$checkpoint/model.safetensors.index.json" ] && return 0
  rm -rf "$checkpoint"
  build-gpu/tools/shardcast synth "$checkpoint" --size "$size" --dtypes torch
}
export -f synth
stage synth 120 synth

bench() {
  rm -f build-gpu/gpu-bench.json build-gpu/gpu-bench.md
  (cd build-gpu && tools/shardcast-bench gpu --checkpoint "$PWD/bench-$size" --out gpu-bench)
  local rc=$?
  cp build-gpu/gpu-bench.json build-gpu/gpu-bench.md "$out/" 2>/dev/null  # whatever was written, even on failure
  return $rc
}
export -f bench
stage bench 150 bench

stage peers 180 env PYTHONPATH=build-gpu/python "$python" tests/gpu/peers_bench.py "$checkpoint" --out "$out/peers"

rest() {
  # shellcheck disable=SC2086
  cmake --build build-gpu --parallel "$(nproc)" $keep_going &&
    ctest --test-dir build-gpu --parallel 8 --timeout 120 --output-on-failure -LE 'mpi|install' -E 'Device'
}
export -f rest
stage rest 240 rest

stage shm 10 sh -c '! ls /dev/shm | grep -i shardcast'
