#include "coordinator/index.h"

#include <fmt/format.h>

#include "coordinator/json_strict.h"
#include "core/error.h"

namespace shardcast {
namespace fs = std::filesystem;

CheckpointIndex parse_index(std::string_view text, const std::string& label) {
  auto bad = [&](const std::string& what) {
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': {}", label, what));
  };
  nlohmann::json root = parse_json_strict(text, label, "index");
  if (!root.is_object()) bad("index is not a JSON object");
  CheckpointIndex index;
  if (root.contains("metadata")) {
    const auto& metadata = root["metadata"];
    if (!metadata.is_object()) bad("metadata is not a JSON object");
    if (metadata.contains("total_size")) {
      // transformers writes an integer; some tools write a float with no fraction.
      const auto& total = metadata["total_size"];
      if (total.is_number_unsigned()) {
        index.total_size = total.get<uint64_t>();
      } else if (total.is_number_float() && total.get<double>() >= 0 &&
                 total.get<double>() == static_cast<double>(static_cast<uint64_t>(total.get<double>()))) {
        index.total_size = static_cast<uint64_t>(total.get<double>());
      } else {
        bad(fmt::format("metadata.total_size {} is not a non-negative integer", total.dump()));
      }
    }
  }
  if (!root.contains("weight_map")) bad("index has no weight_map");
  const auto& weight_map = root["weight_map"];
  if (!weight_map.is_object()) bad("weight_map is not a JSON object");
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    if (!it.value().is_string()) bad(fmt::format("weight_map entry '{}' is not a file name", it.key()));
    index.weight_map[it.key()] = it.value().get<std::string>();
  }
  // Loading nothing would pass for success while the shards beside the index go unread.
  if (index.weight_map.empty()) bad("weight_map maps no tensor to a shard");
  return index;
}

fs::path resolve_shard_path(const fs::path& root, const std::string& relative, const std::string& label) {
  auto bad = [&](const std::string& why) {
    throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("'{}': shard path '{}' {}", label, relative, why));
  };
  if (relative.empty()) bad("is empty");
  fs::path rel(relative);
  if (rel.is_absolute()) bad("is absolute; shard paths must be relative to the checkpoint directory");
  for (const auto& part : rel) {
    if (part == "..") bad("contains '..' and would leave the checkpoint directory");
  }
  fs::path joined = root / rel;
  std::error_code ec;
  fs::path real_root = fs::canonical(root, ec);
  if (ec) throw_system_error("realpath", root.string(), ec.value());
  fs::path real = fs::weakly_canonical(joined, ec);
  if (ec) throw_system_error("realpath", joined.string(), ec.value());
  auto mismatch = std::mismatch(real_root.begin(), real_root.end(), real.begin(), real.end());
  if (mismatch.first != real_root.end()) {
    bad(fmt::format("resolves to '{}', outside the checkpoint directory '{}' (through a symlink)", real.string(),
                    real_root.string()));
  }
  return joined;
}

}  // namespace shardcast
