#include <gtest/gtest.h>

#include "core/error.h"
#include "core/size.h"

namespace shardcast {
namespace {

TEST(ParseSize, DecimalUnitsArePowersOfTenAsInTransformers) {
  EXPECT_EQ(parse_size("200MB"), 200'000'000u);
  EXPECT_EQ(parse_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_size("10kb"), 10'000u / 8);  // lowercase final b: bits, as transformers
  EXPECT_EQ(parse_size("3KB"), 3'000u);
  EXPECT_EQ(parse_size("1TB"), 1'000'000'000'000u);
}

TEST(ParseSize, BinaryUnitsArePowersOfTwo) {
  EXPECT_EQ(parse_size("5GiB"), 5ull << 30);
  EXPECT_EQ(parse_size("256MiB"), 256ull << 20);
  EXPECT_EQ(parse_size("1kib"), 1024u);  // only decimal units have a bits spelling
}

TEST(ParseSize, PlainNumbersAreBytes) {
  EXPECT_EQ(parse_size("123"), 123u);
  EXPECT_EQ(parse_size("123B"), 123u);
  EXPECT_EQ(parse_size("0"), 0u);
}

TEST(ParseSize, RejectsGarbageAndOverflowNamingTheText) {
  for (const char* bad : {"", "GB", "1.5GB", "-1", "12XB", "99999999999999999999", "20000000000GB"}) {
    try {
      parse_size(bad);
      FAIL() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(FormatSize, UsesDecimalUnits) {
  EXPECT_EQ(format_size(512), "512 B");
  EXPECT_EQ(format_size(1'500'000), "1.50 MB");
  EXPECT_EQ(format_size(5'000'000'000), "5.00 GB");
}

}  // namespace
}  // namespace shardcast
