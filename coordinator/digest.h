// Per-tensor digests: how users and tests check that a load is bit-exact.
#pragma once

#include <string>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

// name<TAB>DTYPE<TAB>[d0,d1,...]<TAB>sha256 of the contiguous little-endian bytes.
std::string digest_line(const TensorSpec& spec, const void* data, size_t size);

// One line per tensor, sorted by name.
std::vector<std::string> digest_checkpoint(const Catalog& catalog);

}  // namespace shardcast
