// Tensor-parallel slices: which part of a tensor a rank of a TP group holds, and which source bytes that is. Pure
// arithmetic over shapes, shared by the GPU loader (only a rank's bytes cross PCIe) and the CPU views.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/tensor_data.h"

namespace shardcast {

// "pattern:dim": tensors matching pattern (exact, or a prefix ending in '*', or "*suffix") are split along dim across
// the TP group. Megatron's column-parallel linear is dim 0 of its weight, row-parallel dim 1.
struct SliceRule {
  std::string pattern;
  int dim = 0;
};
SliceRule parse_slice_rule(const std::string& text);  // throws kInvalidArgument naming the text

struct TensorParallel {
  int size = 1;  // ranks in the TP group
  int rank = 0;  // this rank's place in it
  std::vector<SliceRule> rules;

  bool active() const { return size > 1 && !rules.empty(); }
};

// The group as world rank `rank` sees it: ranks r, r + size, ... hold the same slice (data-parallel replicas of a TP
// group of consecutive ranks). Throws kInvalidArgument when size does not divide world_size.
TensorParallel tp_for_rank(const TensorParallel& tp, int rank, int world_size);

// The first rule matching `name`, or nullptr.
const SliceRule* find_slice_rule(const TensorParallel& tp, const std::string& name);

// A rectangle of bytes: `rows` runs of `width` bytes, `src_pitch` apart in the source and `dst_pitch` apart in the
// destination (cudaMemcpy2D's shape). A whole tensor is one row.
struct CopyBlock {
  uint64_t src = 0;
  uint64_t dst = 0;
  uint64_t width = 0;
  uint64_t rows = 1;
  uint64_t src_pitch = 0;
  uint64_t dst_pitch = 0;

  uint64_t bytes() const { return width * rows; }
  uint64_t src_end() const { return rows ? src + (rows - 1) * src_pitch + width : src; }
};

// What one rank holds of a tensor: its shape and the block of source bytes (offsets relative to the tensor's first
// byte, destination dense). Slices follow torch.tensor_split: the first (dim_size % size) ranks get one more row.
struct RankSlice {
  bool sliced = false;
  int dim = 0;
  int64_t begin = 0;   // along dim
  int64_t length = 0;  // along dim
  std::vector<int64_t> shape;
  CopyBlock block;
};

// Throws kInvalidArgument naming the tensor when the rule's dim is outside its shape.
RankSlice rank_slice(const TensorSpec& tensor, const TensorParallel& tp);

// The part of `block` whose source bytes lie in [begin, end): at most three blocks (a partial first row, whole rows,
// a partial last row), in source order, offsets unchanged.
std::vector<CopyBlock> clip(const CopyBlock& block, uint64_t begin, uint64_t end);

}  // namespace shardcast
