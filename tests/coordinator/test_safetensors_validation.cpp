// Every defect of the broken-file catalogue (tests/support/safetensors_bytes.cpp) is rejected with its own error.
#include <gtest/gtest.h>

#include "coordinator/safetensors.h"
#include "core/error.h"
#include "core/file.h"
#include "tests/support/safetensors_bytes.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::BrokenCase;

class BrokenSafetensors : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenSafetensors, IsRejectedWithItsOwnErrorNamingFileAndTensor) {
  const BrokenCase& c = GetParam();
  testing::TempDir dir;
  const auto path = dir / "broken.safetensors";
  testing::write_file(path, c.bytes);
  try {
    read_safetensors_header(File::open_read(path));
    FAIL() << "accepted " << c.name;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint) << message;
    EXPECT_NE(message.find(c.expected), std::string::npos) << "message: " << message << "\nexpected: " << c.expected;
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    if (!c.tensor.empty()) {
      EXPECT_NE(message.find("tensor '" + c.tensor + "'"), std::string::npos) << message;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EachDefect, BrokenSafetensors, ::testing::ValuesIn(testing::broken_safetensors_cases()),
                         [](const auto& info) { return info.param.name; });

SafetensorsHeader parse(const std::string& header, uint64_t data_size) {
  return parse_safetensors_header(header, data_size, "test");
}

TEST(SafetensorsHeader, SoundFileParsesInDataOrder) {
  testing::TempDir dir;
  testing::write_file(dir / "ok.safetensors", testing::sound_safetensors());
  SafetensorsHeader h = read_safetensors_header(File::open_read(dir / "ok.safetensors"));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].dtype, DType::kI16);
  EXPECT_EQ(h.tensors[1].shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(h.data_size, 14u);
}

TEST(SafetensorsHeader, HeaderOrderMayDifferFromDataOrder) {
  auto h = parse(
      R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
      6);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].name, "b");
}

TEST(SafetensorsHeader, EmptyCheckpointAndZeroSizedTensorsAreSound) {
  EXPECT_TRUE(parse("{}", 0).tensors.empty());
  auto h = parse(
      R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})",
      8);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "e");
  EXPECT_TRUE(h.tensors[1].shape.empty());
}

TEST(SafetensorsHeader, MetadataAndSpacePaddingAreAccepted) {
  auto h = parse(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}     )", 1);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.tensors.size(), 1u);
}

// As the reference reader: null metadata is no metadata, and JSON whitespace may follow the header's object.
TEST(SafetensorsHeader, NullMetadataAndTrailingWhitespaceAreAccepted) {
  auto h = parse(R"({"__metadata__":null,"a":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})"
                 "\n \t",
                 1);
  EXPECT_TRUE(h.metadata.empty());
  EXPECT_EQ(h.tensors.size(), 1u);
}

TEST(SafetensorsHeader, EncodedHeaderIsAlignedAndParsesBack) {
  std::vector<SafetensorsEntry> entries = {{"x", DType::kF64, {2}, 0, 16}, {"y", DType::kU8, {3}, 16, 19}};
  std::string bytes = encode_safetensors_header(entries, {{"format", "pt"}});
  EXPECT_EQ(bytes.size() % 8, 0u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n + 8, bytes.size());
  auto h = parse(bytes.substr(8), 19);
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[1].end, 19u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

}  // namespace
}  // namespace shardcast

namespace shardcast {
namespace {

// Random corruption of a sound file: the reader either accepts it or throws shardcast::Error, never anything else.
TEST(SafetensorsHeader, RandomCorruptionNeverCrashesOrEscapesAsAnotherException) {
  testing::TempDir dir;
  const std::string sound = testing::sound_safetensors();
  uint64_t state = 12345;
  auto next = [&] { return state = state * 6364136223846793005ull + 1442695040888963407ull, state >> 33; };
  int rejected = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = sound;
    int edits = 1 + next() % 4;
    for (int e = 0; e < edits; ++e) {
      size_t at = next() % bytes.size();
      switch (next() % 3) {
        case 0: bytes[at] = static_cast<char>(next()); break;
        case 1: bytes.erase(at, 1 + next() % 3); break;
        default: bytes.insert(at, 1, static_cast<char>(next())); break;
      }
      if (bytes.empty()) bytes = "x";
    }
    const auto path = dir / "mutant.safetensors";
    testing::write_file(path, bytes);
    try {
      read_safetensors_header(File::open_read(path));
    } catch (const Error& e) {
      ++rejected;
      EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint) << e.what();
    }
  }
  EXPECT_GT(rejected, 2500);
}

}  // namespace
}  // namespace shardcast
