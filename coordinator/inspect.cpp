#include "coordinator/inspect.h"

#include <algorithm>

namespace shardcast {

CheckpointSummary summarize_checkpoint(const std::filesystem::path& path) {
  CheckpointSummary s;
  s.path = path;
  s.catalog = open_catalog(path);
  for (const TensorInfo& t : s.catalog.tensors) {
    auto& d = s.dtypes[std::string(dtype_name(t.dtype))];
    ++d.tensors;
    if (t.tied_to.empty()) {
      d.bytes += t.nbytes();  // tied weights once, as tensor_bytes()
    } else {
      ++s.tied;
    }
  }
  for (size_t i = 0; i < s.catalog.shards.size(); ++i) {
    const ShardInfo& shard = s.catalog.shards[i];
    s.file_bytes += shard.file_size;
    if (!s.largest || shard.file_size > s.catalog.shards[*s.largest].file_size) s.largest = i;
    s.metadata.insert(shard.metadata.begin(), shard.metadata.end());
  }
  return s;
}

nlohmann::ordered_json summary_json(const CheckpointSummary& s) {
  using json = nlohmann::ordered_json;
  const Catalog& catalog = s.catalog;
  json out;
  out["path"] = s.path.string();
  out["format"] = format_name(catalog.format);
  out["index"] = catalog.index_path.empty() ? json(nullptr) : json(catalog.index_path.string());
  out["index_total_size"] = catalog.index_total_size ? json(*catalog.index_total_size) : json(nullptr);
  out["tensor_count"] = catalog.tensors.size();
  out["tied_tensors"] = s.tied;
  out["tensor_bytes"] = catalog.tensor_bytes();
  out["file_bytes"] = s.file_bytes;
  if (s.largest) {
    const ShardInfo& largest = catalog.shards[*s.largest];
    out["largest_shard"] = {{"file", largest.file}, {"bytes", largest.file_size}};
  } else {
    out["largest_shard"] = nullptr;
  }
  out["shards"] = json::array();
  for (const ShardInfo& shard : catalog.shards) {
    out["shards"].push_back({{"file", shard.file}, {"bytes", shard.file_size}, {"tensors", shard.tensor_count}});
  }
  out["dtypes"] = json::object();
  for (const auto& [name, d] : s.dtypes) out["dtypes"][name] = {{"tensors", d.tensors}, {"bytes", d.bytes}};
  out["metadata"] = s.metadata;
  return out;
}

}  // namespace shardcast
