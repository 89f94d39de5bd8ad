// What `shardcast inspect` and Python's shardcast.inspect() report of a checkpoint: shards, tensors, dtypes, sizes,
// metadata, from the catalog alone (headers and index; no tensor bytes are read).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"

namespace shardcast {

struct CheckpointSummary {
  struct DTypeStats {
    size_t tensors = 0;
    uint64_t bytes = 0;
  };
  std::filesystem::path path;
  Catalog catalog;
  std::map<std::string, DTypeStats> dtypes;  // by safetensors dtype name
  uint64_t file_bytes = 0;                   // all shard files
  std::optional<size_t> largest;             // index into catalog.shards (an index survives copies)
  std::map<std::string, std::string> metadata;
  size_t tied = 0;  // tensors that share another name's storage (.bin)
};

CheckpointSummary summarize_checkpoint(const std::filesystem::path& path);

nlohmann::ordered_json summary_json(const CheckpointSummary& summary);

}  // namespace shardcast
