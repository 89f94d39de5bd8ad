#include <gtest/gtest.h>

#include "core/duration.h"
#include "core/error.h"

namespace shardcast {
namespace {

using std::chrono::seconds;

TEST(ParseDuration, UnitsAndPlainSeconds) {
  EXPECT_EQ(parse_duration("600"), seconds(600));
  EXPECT_EQ(parse_duration("10m"), seconds(600));
  EXPECT_EQ(parse_duration("90s"), seconds(90));
  EXPECT_EQ(parse_duration("1h30m"), seconds(5400));
  EXPECT_EQ(parse_duration("2.5h"), seconds(9000));
  EXPECT_EQ(parse_duration("1d"), seconds(86400));
  EXPECT_EQ(parse_duration("0"), seconds(0));
}

TEST(ParseDuration, RejectsGarbageNamingTheText) {
  for (const char* bad : {"", "m", "-5m", "10x", "1h30", "ten", "1e9d", "5 m"}) {
    try {
      parse_duration(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos) << e.what();
    }
  }
}

TEST(FormatDuration, TwoLargestUnits) {
  EXPECT_EQ(format_duration(seconds(45)), "45s");
  EXPECT_EQ(format_duration(seconds(588)), "9m48s");
  EXPECT_EQ(format_duration(seconds(7500)), "2h05m");
  EXPECT_EQ(format_duration(seconds(273600)), "3d04h");
  EXPECT_EQ(format_duration(seconds(-30)), "-30s");
}

}  // namespace
}  // namespace shardcast
