#include <gtest/gtest.h>

#include "coordinator/catalog.h"
#include "coordinator/sharded_writer.h"
#include "tests/support/safetensors_bytes.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::TempDir;

TEST(Catalog, SingleSafetensorsFileLoadsWithoutAnIndexFromDirOrFile) {
  TempDir dir;
  testing::write_file(dir / "model.safetensors", testing::sound_safetensors());
  for (const auto& path : {dir.path(), dir / "model.safetensors"}) {
    Catalog c = open_catalog(path);
    EXPECT_TRUE(c.index_path.empty());
    ASSERT_EQ(c.tensors.size(), 2u);
    const TensorInfo* b = c.find("b");
    ASSERT_NE(b, nullptr);
    EXPECT_TRUE(b->has_file_range);
    EXPECT_EQ(b->file_offset, c.shards[0].data_start + 8);
    EXPECT_EQ(b->nbytes(), 6u);
    EXPECT_EQ(c.tensor_bytes(), 14u);
  }
}

TEST(Catalog, PrefersSafetensorsOverBinLikeTransformers) {
  TempDir dir;
  testing::write_file(dir / "model.safetensors", testing::sound_safetensors());
  testing::write_file(dir / "pytorch_model.bin", "not even a zip");
  EXPECT_EQ(open_catalog(dir.path()).format, CheckpointFormat::kSafetensors);
}

TEST(Catalog, EmptyDirectorySaysWhatItLookedFor) {
  TempDir dir;
  try {
    open_catalog(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("looked for model.safetensors.index.json"), std::string::npos) << e.what();
  }
}

TEST(Catalog, MissingPathIsAnInvalidArgument) {
  try {
    open_catalog("/nonexistent/ckpt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'/nonexistent/ckpt' does not exist"), std::string::npos);
  }
}

TEST(Catalog, ShardErrorsCarryTheShardPosition) {
  TempDir dir;
  testing::write_file(dir / "model.safetensors", testing::broken_safetensors_cases().back().bytes);
  try {
    open_catalog(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reading shard 1/1 'model.safetensors'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardcast
