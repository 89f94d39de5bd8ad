#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace shardcast {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
  bool floating;
};

constexpr std::array<DTypeInfo, kDTypeCount> kInfo = {{
    {DType::kBool, "BOOL", 1, false},
    {DType::kU8, "U8", 1, false},
    {DType::kI8, "I8", 1, false},
    {DType::kF8_E5M2, "F8_E5M2", 1, true},
    {DType::kF8_E4M3, "F8_E4M3", 1, true},
    {DType::kI16, "I16", 2, false},
    {DType::kU16, "U16", 2, false},
    {DType::kF16, "F16", 2, true},
    {DType::kBF16, "BF16", 2, true},
    {DType::kI32, "I32", 4, false},
    {DType::kU32, "U32", 4, false},
    {DType::kF32, "F32", 4, true},
    {DType::kF64, "F64", 8, true},
    {DType::kI64, "I64", 8, false},
    {DType::kU64, "U64", 8, false},
}};

const DTypeInfo& info(DType dtype) {
  return kInfo[static_cast<size_t>(dtype)];
}

}  // namespace

std::string_view dtype_name(DType dtype) {
  return info(dtype).name;
}
size_t dtype_size(DType dtype) {
  return info(dtype).size;
}
bool dtype_is_floating(DType dtype) {
  return info(dtype).floating;
}

std::optional<DType> dtype_from_safetensors_name(std::string_view name) {
  for (const auto& i : kInfo) {
    if (i.name == name) return i.dtype;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_user_name(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower.rfind("torch.", 0) == 0) lower = lower.substr(6);
  struct Alias {
    std::string_view alias;
    DType dtype;
  };
  static constexpr Alias kAliases[] = {
      {"bool", DType::kBool},
      {"uint8", DType::kU8},
      {"int8", DType::kI8},
      {"int16", DType::kI16},
      {"short", DType::kI16},
      {"uint16", DType::kU16},
      {"float16", DType::kF16},
      {"fp16", DType::kF16},
      {"half", DType::kF16},
      {"bfloat16", DType::kBF16},
      {"int32", DType::kI32},
      {"int", DType::kI32},
      {"uint32", DType::kU32},
      {"float32", DType::kF32},
      {"fp32", DType::kF32},
      {"float", DType::kF32},
      {"float64", DType::kF64},
      {"fp64", DType::kF64},
      {"double", DType::kF64},
      {"int64", DType::kI64},
      {"long", DType::kI64},
      {"uint64", DType::kU64},
      {"float8_e5m2", DType::kF8_E5M2},
      {"float8_e4m3fn", DType::kF8_E4M3},
  };
  for (const auto& a : kAliases) {
    if (a.alias == lower) return a.dtype;
  }
  for (const auto& i : kInfo) {
    std::string spelled(i.name);
    std::transform(spelled.begin(), spelled.end(), spelled.begin(), [](unsigned char c) { return std::tolower(c); });
    if (spelled == lower) return i.dtype;
  }
  return std::nullopt;
}

}  // namespace shardcast
