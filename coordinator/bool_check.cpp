#include "coordinator/bool_check.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {

void check_bool_bytes(const std::string& tensor, const uint8_t* bytes, uint64_t n, uint64_t first_element) {
  for (uint64_t k = 0; k < n; ++k) {
    if (bytes[k] > 1) {
      throw Error(ErrorCode::kCorruptCheckpoint, fmt::format("BOOL tensor '{}' holds byte value {} at element {}",
                                                             tensor, bytes[k], first_element + k));
    }
  }
}

BoolRanges::BoolRanges(const Catalog& catalog) {
  for (const TensorInfo& t : catalog.tensors) {
    if (t.dtype == DType::kBool && t.has_file_range) tensors_.push_back(&t);
  }
}

void BoolRanges::check(uint32_t shard, uint64_t file_offset, const uint8_t* bytes, uint64_t n) const {
  for (const TensorInfo* t : tensors_) {
    if (t->shard != shard) continue;
    const uint64_t begin = std::max(file_offset, t->file_offset);
    const uint64_t end = std::min(file_offset + n, t->file_offset + t->nbytes());
    if (begin < end) check_bool_bytes(t->name, bytes + (begin - file_offset), end - begin, begin - t->file_offset);
  }
}

}  // namespace shardcast
