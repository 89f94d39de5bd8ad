// Stage: bring the bytes of planned tensors from the checkpoint into segment memory, converting dtypes on the way.
// Every local rank runs it for the tensors the plan gave it.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "coordinator/catalog.h"
#include "coordinator/plan.h"

namespace shardcast {

struct StageStats {
  uint64_t tensors = 0;
  uint64_t bytes_written = 0;  // into segments
};

// Fills, for every staged (not mapped) segment of `batch`, the reads of `node`'s local rank `reader`.
// segment_data[i] is the writable data of plan.segments[i] (only the batch's entries are used). safetensors bytes are
// pread straight into the segment (through a bounce buffer only when converting); a .bin shard is decoded once and
// copied in. on_staged(bytes), when set, runs after each tensor this reader wrote (progress displays).
StageStats stage_tensors(const Catalog& catalog, const Plan& plan, const std::vector<size_t>& batch, int node,
                         int reader, const std::vector<uint8_t*>& segment_data,
                         const std::function<void(uint64_t bytes)>& on_staged = {});

}  // namespace shardcast
