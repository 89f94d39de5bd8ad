#include "core/dtype_cast.h"

#include <cstring>

// c10's Half and BFloat16 are header-only and round-to-nearest-even like torch itself, so a cast here is
// bit-identical to Tensor.to(dtype). Doubles go through float first, as torch's c10::convert does.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <fmt/format.h>

#include "core/error.h"

namespace shardcast {
namespace {

bool castable(DType d) {
  return d == DType::kF16 || d == DType::kBF16 || d == DType::kF32 || d == DType::kF64;
}

template <typename T>
float load_as_float(const void* p, size_t i) {
  return static_cast<float>(static_cast<const T*>(p)[i]);
}

float load_float(const void* src, DType from, size_t i) {
  switch (from) {
    case DType::kF16: return load_as_float<c10::Half>(src, i);
    case DType::kBF16: return load_as_float<c10::BFloat16>(src, i);
    case DType::kF32: return static_cast<const float*>(src)[i];
    default: return static_cast<float>(static_cast<const double*>(src)[i]);
  }
}

double load_double(const void* src, DType from, size_t i) {
  if (from == DType::kF64) return static_cast<const double*>(src)[i];
  return static_cast<double>(load_float(src, from, i));
}

}  // namespace

bool can_cast(DType from, DType to) {
  return from == to || (castable(from) && castable(to));
}

void cast_elements(const void* src, DType from, void* dst, DType to, size_t count) {
  if (!can_cast(from, to)) {
    throw Error(ErrorCode::kInvalidArgument, fmt::format("cannot convert {} to {}: only F16, BF16, F32 and F64 convert",
                                                         dtype_name(from), dtype_name(to)));
  }
  if (from == to) {
    if (count > 0) std::memcpy(dst, src, count * dtype_size(from));
    return;
  }
  switch (to) {
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) static_cast<c10::Half*>(dst)[i] = c10::Half(load_float(src, from, i));
      break;
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) static_cast<c10::BFloat16*>(dst)[i] = c10::BFloat16(load_float(src, from, i));
      break;
    case DType::kF32:
      for (size_t i = 0; i < count; ++i) static_cast<float*>(dst)[i] = load_float(src, from, i);
      break;
    default:
      for (size_t i = 0; i < count; ++i) static_cast<double*>(dst)[i] = load_double(src, from, i);
      break;
  }
}

}  // namespace shardcast
