#include "coordinator/stage.h"

#include <cstring>
#include <map>

#include <fmt/format.h>

#include "coordinator/bool_check.h"
#include "coordinator/shard_reader.h"
#include "core/dtype_cast.h"
#include "core/file.h"

namespace shardcast {
namespace {

void fill(const TensorInfo& t, const PlannedTensor& p, const uint8_t* source, uint8_t* segment) {
  if (t.dtype == DType::kBool) check_bool_bytes(t.name, source, t.nbytes());
  cast_elements(source, t.dtype, segment + p.offset, p.dtype, t.numel());
}

}  // namespace

StageStats stage_tensors(const Catalog& catalog, const Plan& plan, const std::vector<size_t>& batch, int node,
                         int reader, const std::vector<uint8_t*>& segment_data,
                         const std::function<void(uint64_t bytes)>& on_staged) {
  StageStats stats;
  auto staged = [&](uint64_t bytes) {
    ++stats.tensors;
    stats.bytes_written += bytes;
    if (on_staged) on_staged(bytes);
  };
  for (size_t index : batch) {
    const PlannedSegment& segment = plan.segments[index];
    if (segment.owner_node != node) continue;  // another node reads it and sends it over
    uint8_t* data = segment_data.at(index);
    const ShardInfo& shard = catalog.shards[segment.shard];
    bool mine = false;
    for (const PlannedTensor& p : segment.tensors) mine |= p.reader == reader;
    if (!mine) continue;
    try {
      if (shard.format == CheckpointFormat::kSafetensors) {
        File file = File::open_read(shard.path);
        std::vector<uint8_t> bounce;
        for (const PlannedTensor& p : segment.tensors) {
          if (p.reader != reader) continue;
          const TensorInfo& t = catalog.tensors[p.catalog_index];
          if (t.dtype == p.dtype) {
            file.read_exact_at(data + p.offset, p.nbytes, t.file_offset);
            if (t.dtype == DType::kBool) check_bool_bytes(t.name, data + p.offset, p.nbytes);
          } else {
            bounce.resize(t.nbytes());
            file.read_exact_at(bounce.data(), bounce.size(), t.file_offset);
            fill(t, p, bounce.data(), data);
          }
          staged(p.nbytes);
        }
      } else {
        std::map<std::string, Bytes> decoded = decode_bin_shard(catalog, segment.shard);
        for (const PlannedTensor& p : segment.tensors) {
          if (p.tied) continue;  // its bytes are its original's
          const TensorInfo& t = catalog.tensors[p.catalog_index];
          fill(t, p, decoded.at(t.name).data, data);
          staged(p.nbytes);
        }
      }
    } catch (const Error& e) {
      throw e.with_context(shard_context(catalog, segment.shard));
    }
  }
  return stats;
}

}  // namespace shardcast
