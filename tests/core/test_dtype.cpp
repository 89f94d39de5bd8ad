#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/dtype_cast.h"
#include "core/error.h"

namespace shardcast {
namespace {

TEST(DType, EverySafetensorsNameRoundTripsWithItsSize) {
  const std::pair<const char*, size_t> expected[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8},
  };
  for (const auto& [name, size] : expected) {
    auto dtype = dtype_from_safetensors_name(name);
    ASSERT_TRUE(dtype) << name;
    EXPECT_EQ(dtype_name(*dtype), name);
    EXPECT_EQ(dtype_size(*dtype), size) << name;
  }
  EXPECT_FALSE(dtype_from_safetensors_name("bf16"));  // headers use the exact spelling
}

TEST(DType, UserNamesAcceptTorchAndTransformersSpellings) {
  EXPECT_EQ(dtype_from_user_name("bf16"), DType::kBF16);
  EXPECT_EQ(dtype_from_user_name("torch.bfloat16"), DType::kBF16);
  EXPECT_EQ(dtype_from_user_name("float16"), DType::kF16);
  EXPECT_EQ(dtype_from_user_name("half"), DType::kF16);
  EXPECT_EQ(dtype_from_user_name("fp32"), DType::kF32);
  EXPECT_EQ(dtype_from_user_name("F64"), DType::kF64);
  EXPECT_FALSE(dtype_from_user_name("float128"));
}

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(DTypeCast, Float32ToBFloat16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between two bf16 values: rounds to even (1.0); 1 + 3*2^-8 rounds up.
  float in[] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 0.0f};
  uint16_t out[4];
  cast_elements(in, DType::kF32, out, DType::kBF16, 4);
  EXPECT_EQ(out[0], 0x3f80);
  EXPECT_EQ(out[1], 0x3f82);
  EXPECT_EQ(out[2], 0xc020);
  EXPECT_EQ(out[3], 0x0000);
}

TEST(DTypeCast, HalfAndBFloat16WidenExactly) {
  uint16_t half[] = {0x3c00, 0xc000, 0x7c00};  // 1, -2, +inf
  float wide[3];
  cast_elements(half, DType::kF16, wide, DType::kF32, 3);
  EXPECT_EQ(wide[0], 1.0f);
  EXPECT_EQ(wide[1], -2.0f);
  EXPECT_TRUE(std::isinf(wide[2]));
  uint16_t bf[] = {0x4049};  // 3.140625
  double d;
  cast_elements(bf, DType::kBF16, &d, DType::kF64, 1);
  EXPECT_EQ(d, 3.140625);
  EXPECT_EQ(f32_bits(static_cast<float>(d)), 0x40490000u);
}

TEST(DTypeCast, RefusesIntegerAndF8Conversions) {
  int32_t i = 1;
  float f;
  EXPECT_FALSE(can_cast(DType::kI32, DType::kF32));
  EXPECT_FALSE(can_cast(DType::kF8_E4M3, DType::kBF16));
  EXPECT_TRUE(can_cast(DType::kI32, DType::kI32));
  try {
    cast_elements(&i, DType::kI32, &f, DType::kF32, 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("cannot convert I32 to F32"), std::string::npos);
  }
}

}  // namespace
}  // namespace shardcast
