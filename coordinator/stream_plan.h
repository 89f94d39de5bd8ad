// The stream plan for GPU placement: the checkpoint bytes a node needs, in file order, cut into chunks that pass
// through a bounded ring of node-shared host buffers. Torch-free arithmetic; the worker executes it.
#pragma once

#include <cstdint>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

struct StreamedTensor {
  uint32_t catalog_index = 0;
  uint64_t offset = 0;  // in the stream
  uint64_t nbytes = 0;  // in the checkpoint's dtype
};

struct StreamPlan {
  std::vector<StreamedTensor> tensors;  // shard by shard, in file order, packed back to back
  uint64_t total_bytes = 0;
  uint64_t chunk_bytes = 0;

  uint64_t chunk_count() const { return chunk_bytes ? (total_bytes + chunk_bytes - 1) / chunk_bytes : 0; }
  uint64_t chunk_begin(uint64_t chunk) const { return chunk * chunk_bytes; }
  uint64_t chunk_end(uint64_t chunk) const { return std::min(total_bytes, (chunk + 1) * chunk_bytes); }
  // Index into `tensors` of the first tensor whose bytes reach past `offset`.
  size_t first_tensor_after(uint64_t offset) const;
};

// The tensors `wanted` (catalog indices) streamed in chunks of chunk_bytes. Only safetensors have byte ranges to
// stream: a .bin tensor is an error naming it.
StreamPlan make_stream_plan(const Catalog& catalog, const std::vector<uint32_t>& wanted, uint64_t chunk_bytes);

// One pread: `length` bytes at `file_offset` of shard `shard` into the ring slot at `slot_offset`.
struct FileRead {
  uint32_t shard = 0;
  uint64_t file_offset = 0;
  uint64_t length = 0;
  uint64_t slot_offset = 0;
};

// Part `part` of `parts` (the node's local ranks share each chunk's reads evenly by bytes).
std::vector<FileRead> chunk_reads(const Catalog& catalog, const StreamPlan& plan, uint64_t chunk, int part, int parts);

}  // namespace shardcast
