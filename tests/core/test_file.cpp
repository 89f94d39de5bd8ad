#include <gtest/gtest.h>

#include "core/error.h"
#include "core/file.h"
#include "core/sha256.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::TempDir;

TEST(File, ShortReadIsACorruptCheckpointNamingPathAndOffset) {
  TempDir dir;
  testing::write_file(dir / "f", "0123456789");
  File f = File::open_read(dir / "f");
  EXPECT_EQ(f.size(), 10u);
  char buffer[8];
  f.read_exact_at(buffer, 4, 6);
  EXPECT_EQ(std::string(buffer, 4), "6789");
  try {
    f.read_exact_at(buffer, 8, 6);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint);
    EXPECT_NE(std::string(e.what()).find((dir / "f").string()), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("file ends at byte 10"), std::string::npos) << e.what();
  }
}

TEST(File, OpenMissingFileNamesTheCallAndPath) {
  try {
    File::open_read("/nonexistent/shardcast/x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSystem);
    EXPECT_NE(std::string(e.what()).find("open('/nonexistent/shardcast/x')"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos);
  }
}

TEST(File, CreateExclusiveNeverOverwrites) {
  TempDir dir;
  { File::create_exclusive(dir / "x").write_all("abc", 3); }
  EXPECT_THROW(File::create_exclusive(dir / "x"), Error);
  EXPECT_EQ(testing::read_file(dir / "x"), "abc");
}

TEST(Sha256, MatchesKnownVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 streamed;
  streamed.update("a", 1);
  streamed.update("bc", 2);
  EXPECT_EQ(streamed.hex_digest(), sha256_hex("abc", 3));
}

}  // namespace
}  // namespace shardcast
