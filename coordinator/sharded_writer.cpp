#include "coordinator/sharded_writer.h"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "coordinator/safetensors.h"
#include "coordinator/torch_bin.h"
#include "core/error.h"
#include "core/file.h"

namespace shardcast {
namespace fs = std::filesystem;

std::vector<std::vector<size_t>> plan_shards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_size) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t size = tensors[i].nbytes();
    if (size > max_shard_size) {
      shards.push_back({i});
      continue;
    }
    if (current_size + size > max_shard_size && !current.empty()) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += size;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));
  return shards;
}

ShardedWriter::ShardedWriter(fs::path dir, std::vector<TensorSpec> tensors, WriterOptions options)
    : dir_(std::move(dir)), specs_(std::move(tensors)), options_(std::move(options)) {
  if (options_.max_shard_size == 0) throw Error(ErrorCode::kInvalidArgument, "max_shard_size must be positive");
  std::error_code ec;
  if (fs::exists(dir_, ec) && !fs::is_empty(dir_, ec)) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("destination '{}' is not empty; shardcast writes checkpoints only into a new or empty "
                            "directory",
                            dir_.string()));
  }
  fs::create_directories(dir_, ec);
  if (ec) throw_system_error("mkdir", dir_.string(), ec.value());
  std::vector<std::string> names;
  for (const TensorSpec& s : specs_) names.push_back(s.name);
  std::sort(names.begin(), names.end());
  auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) throw Error(ErrorCode::kInvalidArgument, fmt::format("tensor name '{}' appears twice", *dup));

  plan_ = plan_shards(specs_, options_.max_shard_size);
  shard_of_.resize(specs_.size());
  missing_.resize(plan_.size());
  for (size_t s = 0; s < plan_.size(); ++s) {
    missing_[s] = plan_[s].size();
    for (size_t t : plan_[s]) shard_of_[t] = s;
  }
  pending_.resize(specs_.size());
  for (size_t s = 0; s < plan_.size(); ++s) {
    if (missing_[s] == 0) write_shard(s);  // an empty checkpoint is one empty shard
  }
}

ShardedWriter::~ShardedWriter() {
  if (finished_) return;
  for (const fs::path& p : written_) {
    std::error_code ec;
    fs::remove(p, ec);
  }
}

std::string ShardedWriter::shard_file_name(size_t shard) const {
  const bool st = options_.format == CheckpointFormat::kSafetensors;
  if (plan_.size() == 1) return st ? "model.safetensors" : "pytorch_model.bin";
  return fmt::format("{}-{:05d}-of-{:05d}.{}", st ? "model" : "pytorch_model", shard + 1, plan_.size(),
                     st ? "safetensors" : "bin");
}

void ShardedWriter::add(TensorData tensor) {
  if (finished_ || next_ >= specs_.size()) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor '{}' added after the last planned tensor", tensor.name));
  }
  const TensorSpec& spec = specs_[next_];
  if (tensor.name != spec.name || tensor.dtype != spec.dtype || tensor.shape != spec.shape) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("expected tensor '{}' {}{} next, got '{}' {}{}", spec.name,
                                                         dtype_name(spec.dtype), shape_string(spec.shape), tensor.name,
                                                         dtype_name(tensor.dtype), shape_string(tensor.shape)));
  }
  if (tensor.bytes.size != spec.nbytes()) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("tensor '{}': {} bytes given, {}{} needs {}", spec.name, tensor.bytes.size,
                            dtype_name(spec.dtype), shape_string(spec.shape), spec.nbytes()));
  }
  size_t shard = shard_of_[next_];
  pending_[next_++] = std::move(tensor);
  if (--missing_[shard] == 0) write_shard(shard);
}

void ShardedWriter::write_shard(size_t shard) {
  const fs::path path = dir_ / shard_file_name(shard);
  std::vector<TensorData> tensors;
  for (size_t t : plan_[shard]) tensors.push_back(std::move(pending_[t]));
  written_.push_back(path);
  if (options_.format == CheckpointFormat::kTorchBin) {
    write_torch_bin(path, tensors);
    return;
  }
  // As the reference writer: largest element size first, then by name, so with the 8-byte aligned header every
  // tensor starts at a multiple of its element size (zero-copy views stay aligned).
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorData& a, const TensorData& b) {
    size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
  std::vector<SafetensorsEntry> entries;
  uint64_t offset = 0;
  for (const TensorData& t : tensors) {
    entries.push_back({t.name, t.dtype, t.shape, offset, offset + t.bytes.size});
    offset += t.bytes.size;
  }
  std::string header = encode_safetensors_header(entries, options_.metadata);
  File file = File::create_exclusive(path);
  file.write_all(header.data(), header.size());
  for (const TensorData& t : tensors) file.write_all(t.bytes.data, t.bytes.size);
  file.sync();
}

std::vector<fs::path> ShardedWriter::finish() {
  if (next_ != specs_.size()) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("finish() with {} of {} tensors added; next is '{}'", next_,
                                                         specs_.size(), specs_[next_].name));
  }
  if (plan_.size() > 1) {
    nlohmann::json index;
    uint64_t total = 0;
    for (const TensorSpec& s : specs_) total += s.nbytes();
    index["metadata"]["total_size"] = total;
    index["weight_map"] = nlohmann::json::object();
    for (size_t t = 0; t < specs_.size(); ++t) index["weight_map"][specs_[t].name] = shard_file_name(shard_of_[t]);
    const bool st = options_.format == CheckpointFormat::kSafetensors;
    fs::path path = dir_ / (st ? "model.safetensors.index.json" : "pytorch_model.bin.index.json");
    std::string text = index.dump(2) + "\n";  // nlohmann::json objects are sorted: weight_map comes out sorted
    written_.push_back(path);
    File file = File::create_exclusive(path);
    file.write_all(text.data(), text.size());
    file.sync();
  }
  finished_ = true;
  return written_;
}

std::vector<fs::path> save_sharded(const std::vector<TensorData>& tensors, const fs::path& dir,
                                   const WriterOptions& options) {
  std::vector<TensorSpec> specs(tensors.begin(), tensors.end());
  ShardedWriter writer(dir, std::move(specs), options);
  for (const TensorData& t : tensors) writer.add(t);
  return writer.finish();
}

}  // namespace shardcast
