// DType <-> torch's ScalarType, for the two places that build torch tensors (torch_bin.cpp, the worker's bridge).
// Include only from .cpp files that already pay for torch headers.
#pragma once

#include <optional>

#include <c10/core/ScalarType.h>
#include <torch/version.h>

#include "core/dtype.h"

namespace shardcast {

// Newer LibTorch (2.1+: float8, 2.3+: uint16/32/64) represents every safetensors dtype; Debian's 1.13 does not.
#define SHARDCAST_TORCH_HAS_FLOAT8 (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))
#define SHARDCAST_TORCH_HAS_UINT (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3))

inline std::optional<c10::ScalarType> to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kBool: return c10::kBool;
    case DType::kU8: return c10::kByte;
    case DType::kI8: return c10::kChar;
    case DType::kI16: return c10::kShort;
    case DType::kI32: return c10::kInt;
    case DType::kI64: return c10::kLong;
    case DType::kF16: return c10::kHalf;
    case DType::kBF16: return c10::kBFloat16;
    case DType::kF32: return c10::kFloat;
    case DType::kF64: return c10::kDouble;
#if SHARDCAST_TORCH_HAS_FLOAT8
    case DType::kF8_E5M2: return c10::ScalarType::Float8_e5m2;
    case DType::kF8_E4M3: return c10::ScalarType::Float8_e4m3fn;
#endif
#if SHARDCAST_TORCH_HAS_UINT
    case DType::kU16: return c10::ScalarType::UInt16;
    case DType::kU32: return c10::ScalarType::UInt32;
    case DType::kU64: return c10::ScalarType::UInt64;
#endif
    default: return std::nullopt;
  }
}

inline std::optional<DType> from_scalar_type(c10::ScalarType type) {
  for (int d = 0; d < kDTypeCount; ++d) {
    auto dtype = static_cast<DType>(d);
    if (to_scalar_type(dtype) == type) return dtype;
  }
  return std::nullopt;
}

}  // namespace shardcast
