#!/usr/bin/env bash
# pip install ./python into a new venv (with the system's torch), then import it from elsewhere and load a checkpoint.
# Arguments: PYTHON SOURCE_DIR BUILD_DIR.
set -euo pipefail
python=$1 src=$2 build=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$src/python/build" "$src/python/shardcast.egg-info"' EXIT
"$python" -m venv --system-site-packages "$tmp/venv"
SHARDCAST_CMAKE_BUILD_DIR=$build "$tmp/venv/bin/pip" install --no-build-isolation --no-index "$src/python"
cd "$tmp"
"$tmp/venv/bin/python" - "$tmp" <<'PY'
import sys, torch, shardcast
root = sys.argv[1]
assert shardcast.__file__.startswith(root + "/venv/"), shardcast.__file__
state = {"w": torch.arange(6.0).reshape(2, 3)}
shardcast.save_sharded(state, root + "/ckpt")
assert torch.equal(shardcast.load(root + "/ckpt")["w"], state["w"])
print("pip-installed shardcast", shardcast.__version__, "loads from", shardcast.__file__)
PY
"$tmp/venv/bin/pip" show shardcast | grep -E '^(Name|Version|Location)'
echo PASS
