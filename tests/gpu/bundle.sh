#!/usr/bin/env bash
# Run here, on the Debian 12 development machine, before a call to the lent GPU machine: puts the Debian packages that
# machine lacks (it has no network, no Open MPI, Boost, fmt, CLI11, nlohmann-json, GoogleTest or OpenSSL headers) into
# .gpu-bundle/ (git-ignored) as the .deb files themselves, compressed as Debian ships them. tests/gpu/run.sh unpacks
# them with `dpkg -x` into a prefix of its own (never into /) and builds against it. Open MPI is not bundled: the GPU
# build has SHARDCAST_WITH_MPI=OFF (one rank; NCCL refuses two ranks on one GPU). Prints the bundle's size.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle=.gpu-bundle
# Header-only or static where Debian allows, plus the two shared libraries the build links (fmt, libcrypto).
packages=(nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev libboost-dev libssl-dev zlib1g-dev)

# The versioned packages behind the unversioned names (libboost-dev -> libboost1.74-dev; libfmt-dev -> libfmt9, ...):
# `dpkg -x` installs no dependencies, so the bundle names each one.
resolve() {
  for p in "$@"; do
    [ "$p" = libboost-dev ] || echo "$p"  # an empty metapackage: only its dependency matters
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "$p" |
      awk '/Depends:/ {print $2}' | grep -E '^(libboost[0-9.]+-dev|libfmt[0-9]+|libssl[0-9]+|zlib1g)$' || true
  done | sort -u
}

if ! apt-cache show libboost-dev >/dev/null 2>&1; then
  apt-get update -q
fi
mapfile -t debs < <(resolve "${packages[@]}")
rm -rf "$bundle"
mkdir -p "$bundle"
(cd "$bundle" && apt-get download "${debs[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed')
bytes=$(du -cb "$bundle"/*.deb | tail -1 | cut -f1)
echo "tests/gpu/bundle.sh: $(ls "$bundle"/*.deb | wc -l) packages, $((bytes / 1048576)) MiB in $bundle/:"
ls "$bundle"
if [ "$bytes" -gt $((48 << 20)) ]; then
  echo "tests/gpu/bundle.sh: the bundle is over 48 MiB: with the tree it would not fit a device call's 64 MiB" >&2
  exit 1
fi
