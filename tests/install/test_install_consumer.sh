#!/usr/bin/env bash
# The installed package as a consumer sees it: `cmake --install BUILD` into a temporary prefix, examples/ configured
# and built as an outside project (find_package(shardcast), shardcast::shardcast) with BUILD's generator and
# compiler, then the example run once as a single process (no launcher: it saves, then loads, a small checkpoint).
#   tests/install/test_install_consumer.sh BUILD_DIR SOURCE_DIR
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shardcast-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
generator=$(cache CMAKE_GENERATOR)
args=(-G "$generator" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_COMPILER="$(cache CMAKE_CXX_COMPILER)"
      -DCMAKE_BUILD_TYPE="$(cache CMAKE_BUILD_TYPE)" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)
make_program=$(cache CMAKE_MAKE_PROGRAM)
[[ -n $make_program ]] && args+=(-DCMAKE_MAKE_PROGRAM="$make_program")
# A sanitized build's static libraries need the same flags in the program that links them.
sanitize=$(cache SHARDCAST_SANITIZE)
if [[ -n $sanitize ]]; then
  flags="-fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  for s in ${sanitize//;/ }; do flags+=" -fsanitize=$s"; done
  args+=(-DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags")
fi

echo "== cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
echo "installed $(grep -c '^-- Installing' "$tmp/install.log") files"
# The package must stand on its own: no path into the build or the source tree.
if grep -rlF -e "$build" -e "$src" "$prefix/lib/cmake" "$prefix/include"; then
  echo "FAIL: the installed package above refers to $build or $src" >&2
  exit 1
fi

echo "== configure examples/ against $prefix ($generator)"
cmake -S "$src/examples" -B "$tmp/build" "${args[@]}"
found=$(sed -n 's/^shardcast_DIR:PATH=//p' "$tmp/build/CMakeCache.txt")
if [[ $found != "$prefix"/* ]]; then
  echo "FAIL: find_package(shardcast) used '$found', not the package in $prefix" >&2
  exit 1
fi
echo "== build"
cmake --build "$tmp/build"
if grep -F -e "$build" -e "$src/include" "$tmp/build/compile_commands.json"; then
  echo "FAIL: the example was compiled against the build or source tree's headers" >&2
  exit 1
fi

echo "== run the example as one process"
out=$(env -u OMPI_COMM_WORLD_SIZE -u RANK -u WORLD_SIZE -u SLURM_PROCID -u SLURM_STEP_ID -u PMIX_RANK -u PMI_RANK \
          -u PMI_SIZE "$tmp/build/load_into_module" "$tmp/checkpoint")
echo "$out"
if [[ $out != *"weights match"* ]]; then
  echo "FAIL: the example did not report 'weights match'" >&2
  exit 1
fi

# The Python package, when built, is installed into the interpreter's site-packages under the prefix.
if [ -n "${SHARDCAST_PYTHON_EXE:-}" ]; then
  echo "== import the installed Python package"
  site=$(find "$prefix" -type d -name shardcast -path '*-packages/shardcast' | head -1)
  [ -n "$site" ] || { echo "FAIL: no Python package under $prefix" >&2; exit 1; }
  (cd "$tmp" && PYTHONPATH="$(dirname "$site")" "$SHARDCAST_PYTHON_EXE" -c \
    "import shardcast, sys; assert shardcast.__file__.startswith(sys.argv[1]), shardcast.__file__; print('imported', shardcast.__version__, 'from', shardcast.__file__)" "$site")
fi
echo "PASS"
