#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "coordinator/shard_reader.h"
#include "coordinator/sharded_writer.h"
#include "coordinator/verify.h"
#include "core/size.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

TensorData make(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  TensorData t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  std::vector<uint8_t> bytes(t.nbytes());
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<uint8_t>((i * 31 + name[0]) & (dtype == DType::kBool ? 1 : 0xff));
  t.bytes = Bytes::from_vector(std::move(bytes));
  return t;
}

std::vector<TensorSpec> specs_of_sizes(const std::vector<int64_t>& sizes) {
  std::vector<TensorSpec> specs;
  for (size_t i = 0; i < sizes.size(); ++i) specs.push_back({"t" + std::to_string(i), DType::kU8, {sizes[i]}});
  return specs;
}

TEST(PlanShards, FollowsTransformersGreedySplit) {
  // limit 100: 40+50 fit, +20 tips over -> new shard; 150 is oversized -> its own shard, inserted when met.
  auto plan = plan_shards(specs_of_sizes({40, 50, 20, 150, 30, 100}), 100);
  std::vector<std::vector<size_t>> expected = {{0, 1}, {3}, {2, 4}, {5}};
  EXPECT_EQ(plan, expected);
}

TEST(PlanShards, EverythingFitsInOneShard) {
  EXPECT_EQ(plan_shards(specs_of_sizes({1, 2, 3}), 6).size(), 1u);
  EXPECT_EQ(plan_shards({}, 6).size(), 1u);
}

TEST(ShardedWriter, WritesHuggingFaceNamesAndASortedIndex) {
  TempDir dir;
  WriterOptions options;
  options.max_shard_size = parse_size("1kB");
  std::vector<TensorData> tensors = {make("z.weight", DType::kBF16, {200}), make("a.weight", DType::kF32, {200}),
                                     make("m.bias", DType::kI64, {10})};
  auto files = save_sharded(tensors, dir.path(), options);
  ASSERT_EQ(files.size(), 3u);
  EXPECT_TRUE(fs::exists(dir / "model-00001-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "model-00002-of-00002.safetensors"));
  auto index = nlohmann::json::parse(testing::read_file(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 400 + 800 + 80);
  std::vector<std::string> keys;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"a.weight", "m.bias", "z.weight"}));
  EXPECT_EQ(index["weight_map"]["z.weight"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["a.weight"], "model-00002-of-00002.safetensors");
  // The raw text is sorted too (what a user diffs).
  std::string raw = testing::read_file(dir / "model.safetensors.index.json");
  EXPECT_LT(raw.find("\"a.weight\""), raw.find("\"z.weight\""));
}

TEST(ShardedWriter, OneShardIsASingleModelSafetensorsWithoutIndex) {
  TempDir dir;
  save_sharded({make("a", DType::kF32, {3})}, dir.path());
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
}

TEST(ShardedWriter, RoundTripIsBitExactAndAligned) {
  TempDir dir;
  std::vector<TensorData> tensors = {make("b", DType::kU8, {3}),       make("f16", DType::kF16, {5}),
                                     make("d", DType::kF64, {7}),      make("i", DType::kI32, {2, 3}),
                                     make("flag", DType::kBool, {9}),  make("scalar", DType::kF32, {}),
                                     make("empty", DType::kBF16, {0}), make("big", DType::kU64, {100})};
  WriterOptions options;
  options.max_shard_size = 300;
  save_sharded(tensors, dir.path(), options);
  Catalog c = open_catalog(dir.path());
  ASSERT_EQ(c.tensors.size(), tensors.size());
  size_t seen = 0;
  read_all_tensors(c, [&](const TensorInfo& t, const Bytes& bytes) {
    auto it = std::find_if(tensors.begin(), tensors.end(), [&](const TensorData& d) { return d.name == t.name; });
    ASSERT_NE(it, tensors.end());
    EXPECT_EQ(t.dtype, it->dtype);
    EXPECT_EQ(t.shape, it->shape);
    ASSERT_EQ(bytes.size, it->bytes.size);
    if (bytes.size > 0) {
      EXPECT_EQ(std::memcmp(bytes.data, it->bytes.data, bytes.size), 0) << t.name;
    }
    EXPECT_EQ(t.file_offset % dtype_size(t.dtype), 0u) << t.name << " is not aligned in its file";
    ++seen;
  });
  EXPECT_EQ(seen, tensors.size());
  EXPECT_TRUE(verify_checkpoint(dir.path()).problems.empty());
}

TEST(ShardedWriter, RefusesANonEmptyDestination) {
  TempDir dir;
  testing::write_file(dir / "keep.txt", "precious");
  try {
    save_sharded({make("a", DType::kF32, {3})}, dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("is not empty"), std::string::npos);
  }
  EXPECT_EQ(testing::read_file(dir / "keep.txt"), "precious");
}

TEST(ShardedWriter, AbandonedWriteLeavesNoFiles) {
  TempDir dir;
  {
    WriterOptions options;
    options.max_shard_size = 12;
    ShardedWriter writer(dir / "out", {{"a", DType::kF32, {3}}, {"b", DType::kF32, {3}}}, options);
    writer.add(make("a", DType::kF32, {3}));  // shard 1 complete and written
    EXPECT_TRUE(fs::exists(dir / "out" / "model-00001-of-00002.safetensors"));
    EXPECT_THROW(writer.add(make("c", DType::kF32, {3})), Error);  // out of order
  }
  EXPECT_TRUE(fs::is_empty(dir / "out"));
}

TEST(ShardedWriter, RejectsWrongSizesAndDuplicateNames) {
  TempDir dir;
  ShardedWriter writer(dir / "x", {{"a", DType::kF32, {3}}});
  TensorData wrong = make("a", DType::kF32, {3});
  wrong.bytes.size = 11;
  EXPECT_THROW(writer.add(wrong), Error);
  EXPECT_THROW(ShardedWriter(dir / "y", {{"a", DType::kF32, {3}}, {"a", DType::kF32, {3}}}), Error);
}

}  // namespace
}  // namespace shardcast
