#include "coordinator/index.h"

#include <fmt/format.h>

#include "coordinator/json_strict.h"
#include "core/error.h"

namespace shardcast {
namespace fs = std::filesystem;
namespace {

bool starts_with(const std::string& s, std::string_view prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The Hugging Face hub cache repository folder that holds `real_root`, or empty. In that cache
// (<cache>/models--org--name/{blobs,snapshots}) a snapshot's files are symlinks to ../../blobs/<hash>, so a checkpoint
// at <repo>/snapshots/<rev> (or a folder below it) reads files from all over <repo>, but never outside it.
fs::path hub_cache_repo(const fs::path& real_root) {
  std::error_code ec;
  for (fs::path dir = real_root; dir.has_relative_path(); dir = dir.parent_path()) {
    const std::string name = dir.filename().string();
    if (!starts_with(name, "models--") && !starts_with(name, "datasets--") && !starts_with(name, "spaces--")) continue;
    const fs::path below = real_root.lexically_relative(dir);
    auto part = below.begin();
    const bool in_a_snapshot = part != below.end() && *part == "snapshots" && ++part != below.end();
    if (in_a_snapshot && fs::is_directory(dir / "blobs", ec)) return dir;
  }
  return {};
}

}  // namespace

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
      } else if (const double d = total.is_number_float() ? total.get<double>() : -1;
                 d >= 0 && d < 0x1p64 && d == static_cast<double>(static_cast<uint64_t>(d))) {
        index.total_size = static_cast<uint64_t>(d);  // in range: the comparisons above went first
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
  const fs::path repo = hub_cache_repo(real_root);
  const fs::path& allowed = repo.empty() ? real_root : repo;
  auto mismatch = std::mismatch(allowed.begin(), allowed.end(), real.begin(), real.end());
  if (mismatch.first != allowed.end()) {
    bad(repo.empty() ? fmt::format("resolves to '{}', outside the checkpoint directory '{}' (through a symlink)",
                                   real.string(), real_root.string())
                     : fmt::format("resolves to '{}', outside the checkpoint directory '{}' and its Hugging Face cache "
                                   "repository '{}' (through a symlink)",
                                   real.string(), real_root.string(), repo.string()));
  }
  return joined;
}

}  // namespace shardcast
