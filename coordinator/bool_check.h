// BOOL tensors may hold only the bytes 0 and 1: any other value is undefined behaviour for torch.bool (and numpy's
// bool_), so a tensor holding one would be silently wrong. Checked wherever shardcast reads a BOOL tensor's bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/catalog.h"

namespace shardcast {

// Throws kCorruptCheckpoint "BOOL tensor 'name' holds byte value V at element K" for the first byte above 1;
// `first_element` is the element index of bytes[0] within the tensor.
void check_bool_bytes(const std::string& tensor, const uint8_t* bytes, uint64_t n, uint64_t first_element = 0);

// The BOOL tensors of a catalog that have a byte range in their shard file, to check reads that cover file ranges
// rather than tensors (the GPU ring reads chunks).
class BoolRanges {
 public:
  explicit BoolRanges(const Catalog& catalog);
  // Checks the BOOL bytes within `bytes`, which hold [file_offset, file_offset + n) of shard `shard`.
  void check(uint32_t shard, uint64_t file_offset, const uint8_t* bytes, uint64_t n) const;

 private:
  std::vector<const TensorInfo*> tensors_;
};

}  // namespace shardcast
