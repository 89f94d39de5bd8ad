// Writes a Hugging Face style sharded checkpoint, streaming: each shard is written as soon as its tensors arrived,
// so the peak is one shard, not the model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/tensor_data.h"

namespace shardcast {

inline constexpr uint64_t kDefaultMaxShardSize = 5'000'000'000;  // transformers' "5GB"

struct WriterOptions {
  uint64_t max_shard_size = kDefaultMaxShardSize;  // bytes; parse "200MB" with parse_size
  CheckpointFormat format = CheckpointFormat::kSafetensors;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};  // safetensors __metadata__ of every shard
};

// transformers' sharding: tensors in order fill a shard until the next would exceed max_shard_size; a tensor larger
// than the limit gets a shard of its own. Returns, per shard, the indices of its tensors.
std::vector<std::vector<size_t>> plan_shards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_size);

class ShardedWriter {
 public:
  // `dir` must not exist or be empty. `tensors` fixes the names, order, dtypes and shapes that add() must follow.
  ShardedWriter(std::filesystem::path dir, std::vector<TensorSpec> tensors, WriterOptions options = {});
  ~ShardedWriter();  // removes everything written if finish() did not complete
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;

  // The next tensor, in the constructor's order, with exactly its nbytes() of data.
  void add(TensorData tensor);

  // Writes the index (when there is more than one shard) and returns the files written.
  std::vector<std::filesystem::path> finish();

 private:
  void write_shard(size_t shard);
  std::string shard_file_name(size_t shard) const;

  std::filesystem::path dir_;
  std::vector<TensorSpec> specs_;
  WriterOptions options_;
  std::vector<std::vector<size_t>> plan_;
  std::vector<size_t> shard_of_;     // tensor index -> shard
  std::vector<size_t> missing_;      // per shard: tensors still to come
  std::vector<TensorData> pending_;  // per tensor; cleared once its shard is written
  size_t next_ = 0;
  bool finished_ = false;
  std::vector<std::filesystem::path> written_;
};

// All at once: plan, write every shard and the index.
std::vector<std::filesystem::path> save_sharded(const std::vector<TensorData>& tensors,
                                                const std::filesystem::path& dir, const WriterOptions& options = {});

}  // namespace shardcast
