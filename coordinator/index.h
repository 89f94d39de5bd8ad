// Sharded-checkpoint index: model.safetensors.index.json / pytorch_model.bin.index.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace shardcast {

struct CheckpointIndex {
  std::optional<uint64_t> total_size;             // metadata.total_size, when present
  std::map<std::string, std::string> weight_map;  // tensor name -> shard file, relative to the index's directory
};

// Throws kCorruptCheckpoint naming `label` on malformed JSON, duplicate keys, a missing weight_map or wrong types.
CheckpointIndex parse_index(std::string_view json, const std::string& label);

// The absolute path of shard `relative` under `root`. Rejects (kCorruptCheckpoint) an empty or absolute path, any '..'
// component, and a path that leaves root through a symlink; when root is a snapshot of a Hugging Face hub cache
// (<repo>/snapshots/<rev>, <repo> named models--*, datasets--* or spaces--* and holding blobs/), symlinks may lead
// anywhere inside <repo>, as the cache's links to ../../blobs/<hash> do.
std::filesystem::path resolve_shard_path(const std::filesystem::path& root, const std::string& relative,
                                         const std::string& label);

}  // namespace shardcast
