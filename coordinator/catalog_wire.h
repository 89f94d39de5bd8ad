// The catalog as bytes: rank 0 reads the checkpoint's index and headers once and sends the catalog to every rank.
#pragma once

#include <string>

#include "coordinator/catalog.h"

namespace shardcast {

std::string encode_catalog(const Catalog& catalog);
Catalog decode_catalog(const std::string& bytes);  // throws kInvalidArgument on malformed input

}  // namespace shardcast
