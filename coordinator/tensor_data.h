// A named tensor's description, and the same with its contiguous little-endian bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/bytes.h"
#include "core/dtype.h"

namespace shardcast {

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  uint64_t numel() const;
  uint64_t nbytes() const { return numel() * dtype_size(dtype); }
};

struct TensorData : TensorSpec {
  Bytes bytes;
};

// "[4096,11008]", "[]" for 0-dim: the spelling of digests and messages.
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace shardcast
