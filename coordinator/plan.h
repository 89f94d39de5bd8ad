// The plan: the one place that decides what a node stages, where each tensor sits in which segment, in which dtype,
// and which local rank reads it. Stage and worker execute it; they do not re-decide. Deterministic: every rank
// computes the same plan from the same catalog and request, and the layout hash proves it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

struct LoadRequest {
  // Floating tensors (F16, BF16, F32, F64) are converted to this dtype once per node; nullopt ("keep") keeps each
  // tensor's. Integer, bool and F8 tensors always keep theirs.
  std::optional<DType> dtype;
  // dtype "auto" (transformers' torch_dtype="auto"): make_plan sets `dtype` to auto_dtype(catalog).
  bool dtype_auto = false;
  // When `dtype` is F16 or BF16, floating tensors of these modules load in F32 instead (transformers'
  // keep_in_fp32_modules): an entry matches a name holding it as whole components ("wo" matches "block.0.wo.weight",
  // not "block.0.wout.weight").
  std::vector<std::string> keep_in_fp32;
  // Which tensors: empty means all; an entry ending in '*' is a prefix ("model.layers.0.*"), others exact names.
  // A pattern that matches nothing is an error.
  std::vector<std::string> tensors;
  // The list is exact and complete: an empty `tensors` selects nothing (load_into when no name matches the module).
  bool only_listed = false;
  // Stage one shard at a time (private placement: the node never holds more than one shard in shared memory).
  bool one_shard_at_a_time = false;
  // Local ranks that read from storage: all of them (true), or only the node leader.
  bool parallel_read = true;
};

struct PlannedTensor {
  uint32_t catalog_index = 0;  // into Catalog::tensors
  DType dtype = DType::kF32;   // in the segment (after conversion)
  uint64_t offset = 0;         // in the segment's data, 64-byte aligned
  uint64_t nbytes = 0;         // in the segment
  int reader = 0;              // local rank that fills it
  // A tied .bin weight: the same bytes (offset, nbytes, dtype) as an earlier tensor of this segment, so nothing is
  // staged for it and the node holds the storage once, as torch.load does.
  bool tied = false;
};

struct PlannedSegment {
  uint32_t shard = 0;
  uint64_t size = 0;
  int owner_node = 0;  // the node whose ranks read it from storage; the other nodes receive it from that node
  std::vector<PlannedTensor> tensors;  // in source file order
};

struct Plan {
  std::vector<PlannedSegment> segments;      // one per shard holding a requested tensor
  std::vector<std::vector<size_t>> batches;  // segment indices staged and released together
  uint64_t total_bytes = 0;                  // sum of segment sizes (tensors 64-byte aligned)
  uint64_t tensor_bytes = 0;                 // the planned tensors' bytes in their loaded dtypes, tied ones once
  uint64_t layout_hash = 0;
  size_t tensor_count = 0;
};

inline constexpr uint64_t kTensorAlignment = 64;

// Segments are split between `node_count` nodes balanced by bytes (largest first onto the least loaded node), so the
// job reads each byte from storage once; within a node, tensors go to its `local_size` ranks. Throws
// kInvalidArgument for a pattern matching nothing or an impossible dtype.
Plan make_plan(const Catalog& catalog, const LoadRequest& request, int local_size, int node_count = 1);

// What dtype "auto" loads a checkpoint in, as transformers decides it: config.json's torch_dtype (or dtype), else the
// dtype of the first floating tensor (by name) of the first shard holding one; nullopt when no tensor is floating.
// Throws kInvalidArgument when config.json cannot be read or names a dtype that floating tensors cannot take.
std::optional<DType> auto_dtype(const Catalog& catalog);

// The dtype `tensor` has once loaded under `request` (its dtype resolved: not dtype_auto).
DType loaded_dtype(const TensorInfo& tensor, const LoadRequest& request);

// `request` with dtype "auto" resolved for `catalog`, and the dtype checked: kInvalidArgument if floating tensors
// cannot be loaded in it.
LoadRequest resolve_dtype(const Catalog& catalog, LoadRequest request);

// Does `name` match `pattern`: the exact name, or a prefix when the pattern ends in '*'?
bool pattern_matches(const std::string& pattern, const std::string& name);

// Throws kInvalidArgument naming the first pattern that matches no tensor of the catalog.
void check_patterns_match(const Catalog& catalog, const std::vector<std::string>& patterns);

// Is `name` selected by the request's patterns?
bool tensor_selected(const std::string& name, const std::vector<std::string>& patterns);

}  // namespace shardcast
