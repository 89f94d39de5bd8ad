// Element types, spelled as safetensors spells them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace shardcast {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8_E5M2,
  kF8_E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};
inline constexpr int kDTypeCount = 15;

// "BF16", "F32", ... (the safetensors header spelling).
std::string_view dtype_name(DType dtype);
size_t dtype_size(DType dtype);
bool dtype_is_floating(DType dtype);

// Exactly the safetensors spelling; what a header must contain.
std::optional<DType> dtype_from_safetensors_name(std::string_view name);

// What a user may type: the safetensors spelling in any case, or torch's and transformers' names
// ("bf16", "bfloat16", "float16", "half", "fp32", "float", ...).
std::optional<DType> dtype_from_user_name(std::string_view name);

}  // namespace shardcast
