// Element-wise conversion between floating dtypes, rounding exactly as torch's Tensor.to() does.
#pragma once

#include <cstddef>

#include "core/dtype.h"

namespace shardcast {

// True when cast_elements can convert from -> to: the same dtype, or both among F16, BF16, F32, F64.
bool can_cast(DType from, DType to);

// Converts count elements. Throws kInvalidArgument when !can_cast(from, to).
void cast_elements(const void* src, DType from, void* dst, DType to, size_t count);

}  // namespace shardcast
