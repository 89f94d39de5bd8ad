// Full validation of a checkpoint, reading every byte: what `shardcast verify` runs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace shardcast {

struct VerifyReport {
  std::vector<std::string> problems;  // empty when the checkpoint is sound
  size_t shards = 0;
  size_t tensors = 0;
  uint64_t bytes_read = 0;
};

// Never throws for a bad checkpoint: every problem found (headers, index, shard contents, BOOL values other than
// 0 and 1, a disagreeing total_size) becomes one line.
VerifyReport verify_checkpoint(const std::filesystem::path& path);

}  // namespace shardcast
