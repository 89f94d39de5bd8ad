// shardcast convert: .bin to safetensors, resharding, dtype casting; one source shard in memory at a time.
#pragma once

#include <filesystem>
#include <optional>

#include "coordinator/sharded_writer.h"
#include "core/dtype.h"

namespace shardcast {

struct ConvertOptions {
  uint64_t max_shard_size = kDefaultMaxShardSize;
  // Cast floating tensors (F16, BF16, F32, F64) to this dtype, as transformers' torch_dtype does; integer, bool and
  // F8 tensors keep theirs. nullopt keeps every dtype.
  std::optional<DType> dtype;
};

struct ConvertResult {
  size_t tensors = 0;
  size_t cast = 0;    // tensors whose dtype changed
  size_t untied = 0;  // .bin tied weights written as separate copies (safetensors has no aliasing)
  std::vector<std::filesystem::path> files;
};

// Writes a safetensors checkpoint to dst (new or empty). Tensors keep the source's order (shard by shard).
ConvertResult convert_checkpoint(const std::filesystem::path& src, const std::filesystem::path& dst,
                                 const ConvertOptions& options);

}  // namespace shardcast
