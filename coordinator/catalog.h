// The catalog: every tensor of a checkpoint (name, dtype, shape, shard, byte range) whatever its on-disk format.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/tensor_data.h"
#include "core/error.h"
#include "core/file.h"

namespace shardcast {

enum class CheckpointFormat { kSafetensors, kTorchBin };
std::string_view format_name(CheckpointFormat format);  // "safetensors", "bin"

struct ShardInfo {
  std::string file;            // as named in the index (relative to the checkpoint directory)
  std::filesystem::path path;  // where it is
  CheckpointFormat format;
  uint64_t file_size = 0;
  FileIdentity identity;    // as its header was read: a mapping of it is checked against this
  bool network_fs = false;  // on NFS, Lustre, GPFS, ...: map_files "auto" stages rather than maps it
  uint64_t data_start = 0;  // safetensors: file offset of the data section
  std::map<std::string, std::string> metadata;  // safetensors __metadata__
  size_t tensor_count = 0;
  bool readable = false;  // false when scan_catalog recorded a problem reading it
};

struct TensorInfo : TensorSpec {
  uint32_t shard = 0;
  // safetensors: the tensor's bytes are [file_offset, file_offset + nbytes()) of the shard file.
  // .bin has no such range (storages are zip records, possibly strided): has_file_range is false.
  bool has_file_range = false;
  uint64_t file_offset = 0;
  std::string tied_to;  // .bin: another tensor of the same shard shares this one's storage and view
};

struct Catalog {
  std::filesystem::path root;        // the checkpoint directory
  std::filesystem::path index_path;  // empty for a single-file checkpoint
  CheckpointFormat format = CheckpointFormat::kSafetensors;
  std::vector<ShardInfo> shards;    // in index order (sorted by file name)
  std::vector<TensorInfo> tensors;  // sorted by name
  std::optional<uint64_t> index_total_size;
  // config.json beside the checkpoint (transformers'): its "torch_dtype" (or "dtype"), what dtype "auto" loads in;
  // empty when it has none. A config.json that cannot be read leaves why in config_problem.
  std::string config_dtype;
  std::string config_problem;

  // Bytes of all tensors, counting tied weights once.
  uint64_t tensor_bytes() const;
  const TensorInfo* find(std::string_view name) const;
};

// "reading shard 2/4 'model-00002-of-00004.safetensors'": the context errors about one shard carry.
std::string shard_context(const Catalog& catalog, uint32_t shard);

// Opens a checkpoint directory, an index file, or a single .safetensors/.bin file, validating every header and the
// index against the shards. Throws the first problem found (kCorruptCheckpoint / kInvalidArgument / kSystem), with
// the shard in its message. .bin shards are decoded to learn their tensors.
Catalog open_catalog(const std::filesystem::path& path);

// The same, but records every problem and carries on; the catalog holds what could be read. Warnings are what a load
// tolerates (an index total_size that disagrees with the shards): open_catalog prints them, verify fails on them.
Catalog scan_catalog(const std::filesystem::path& path, std::vector<Error>* problems,
                     std::vector<std::string>* warnings);

}  // namespace shardcast
