#include "coordinator/stream_plan.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

#include "coordinator/shard_reader.h"

namespace shardcast {

size_t StreamPlan::first_tensor_after(uint64_t offset) const {
  auto it = std::upper_bound(tensors.begin(), tensors.end(), offset,
                             [](uint64_t o, const StreamedTensor& t) { return o < t.offset + t.nbytes; });
  return static_cast<size_t>(it - tensors.begin());
}

StreamPlan make_stream_plan(const Catalog& catalog, const std::vector<uint32_t>& wanted, uint64_t chunk_bytes) {
  if (chunk_bytes == 0) throw Error(ErrorCode::kInvalidArgument, "the ring's buffers must hold at least one byte");
  const std::set<uint32_t> want(wanted.begin(), wanted.end());
  StreamPlan plan;
  plan.chunk_bytes = chunk_bytes;
  for (uint32_t s = 0; s < catalog.shards.size(); ++s) {
    for (const TensorInfo* t : shard_tensors_in_read_order(catalog, s)) {
      const uint32_t index = static_cast<uint32_t>(t - catalog.tensors.data());
      if (!want.count(index)) continue;
      if (!t->has_file_range) {
        throw Error(ErrorCode::kInvalidArgument,
                    fmt::format("tensor '{}' of {} has no byte range to stream (a .bin shard); the ring needs "
                                "safetensors (shardcast convert)",
                                t->name, shard_context(catalog, s)));
      }
      plan.tensors.push_back({index, plan.total_bytes, t->nbytes()});
      plan.total_bytes += t->nbytes();
    }
  }
  return plan;
}

std::vector<FileRead> chunk_reads(const Catalog& catalog, const StreamPlan& plan, uint64_t chunk, int part, int parts) {
  const uint64_t chunk_begin = plan.chunk_begin(chunk), length = plan.chunk_end(chunk) - chunk_begin;
  const uint64_t begin = chunk_begin + length * part / parts, end = chunk_begin + length * (part + 1) / parts;
  std::vector<FileRead> reads;
  for (size_t i = plan.first_tensor_after(begin); i < plan.tensors.size() && plan.tensors[i].offset < end; ++i) {
    const StreamedTensor& s = plan.tensors[i];
    const TensorInfo& t = catalog.tensors[s.catalog_index];
    const uint64_t lo = std::max(begin, s.offset), hi = std::min(end, s.offset + s.nbytes);
    if (hi <= lo) continue;
    FileRead read{t.shard, t.file_offset + (lo - s.offset), hi - lo, lo - chunk_begin};
    // Neighbours in the same file merge into one pread.
    if (!reads.empty() && reads.back().shard == read.shard &&
        reads.back().file_offset + reads.back().length == read.file_offset &&
        reads.back().slot_offset + reads.back().length == read.slot_offset) {
      reads.back().length += read.length;
    } else {
      reads.push_back(read);
    }
  }
  return reads;
}

}  // namespace shardcast
