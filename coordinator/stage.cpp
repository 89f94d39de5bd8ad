#include "coordinator/stage.h"

#include <algorithm>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "coordinator/bool_check.h"
#include "coordinator/shard_reader.h"
#include "core/dtype_cast.h"
#include "core/file.h"

namespace shardcast {
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
    if (segment.mapped) continue;  // mapped where it is read, received elsewhere
    auto mine = [&](const PlannedRead& r) { return r.node == node && r.reader == reader; };
    if (std::none_of(segment.reads.begin(), segment.reads.end(), mine)) continue;
    uint8_t* data = segment_data.at(index);
    const ShardInfo& shard = catalog.shards[segment.shard];
    try {
      if (shard.format == CheckpointFormat::kSafetensors) {
        File file = File::open_read(shard.path);
        std::vector<uint8_t> bounce;
        for (const PlannedRead& r : segment.reads) {
          if (!mine(r)) continue;
          const PlannedTensor& p = segment.tensors[r.tensor];
          const TensorInfo& t = catalog.tensors[p.catalog_index];
          const uint64_t source_size = dtype_size(t.dtype), target_size = dtype_size(p.dtype);
          const uint64_t from = t.file_offset + r.first * source_size;
          uint8_t* into = data + p.offset + r.first * target_size;
          if (t.dtype == p.dtype) {
            file.read_exact_at(into, r.count * source_size, from);
          } else {
            bounce.resize(r.count * source_size);
            file.read_exact_at(bounce.data(), bounce.size(), from);
            cast_elements(bounce.data(), t.dtype, into, p.dtype, r.count);
          }
          if (p.dtype == DType::kBool) check_bool_bytes(t.name, into, r.count);
          staged(r.count * target_size);
        }
      } else {
        std::map<std::string, Bytes> decoded = decode_bin_shard(catalog, segment.shard);
        for (const PlannedRead& r : segment.reads) {  // whole tensors, one reader (make_plan)
          const PlannedTensor& p = segment.tensors[r.tensor];
          const TensorInfo& t = catalog.tensors[p.catalog_index];
          const Bytes& bytes = decoded.at(t.name);
          if (t.dtype == DType::kBool) check_bool_bytes(t.name, bytes.data, t.nbytes());
          cast_elements(bytes.data, t.dtype, data + p.offset, p.dtype, t.numel());
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
