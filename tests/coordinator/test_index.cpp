// The index and its consistency with the shards: each defect is found, named, and (in verify mode) all are listed.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "coordinator/index.h"
#include "coordinator/sharded_writer.h"
#include "coordinator/synth.h"
#include "tests/support/hub_cache.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

TensorData tensor(const std::string& name, size_t n_f32) {
  TensorData t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = {static_cast<int64_t>(n_f32)};
  std::vector<uint8_t> bytes(n_f32 * 4);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + name.size());
  t.bytes = Bytes::from_vector(std::move(bytes));
  return t;
}

// Three shards: a+b | c | d (40-byte limit; a, b hold 16 bytes, c, d 32).
void write_three_shards(const fs::path& dir) {
  WriterOptions options;
  options.max_shard_size = 40;
  save_sharded({tensor("a", 4), tensor("b", 4), tensor("c", 8), tensor("d", 8)}, dir, options);
}

nlohmann::json read_index(const fs::path& dir) {
  return nlohmann::json::parse(testing::read_file(dir / "model.safetensors.index.json"));
}
void write_index(const fs::path& dir, const nlohmann::json& index) {
  testing::write_file(dir / "model.safetensors.index.json", index.dump());
}

std::string first_problem(const fs::path& dir) {
  try {
    open_catalog(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> all_problems(const fs::path& dir) {
  std::vector<Error> problems;
  std::vector<std::string> warnings;
  scan_catalog(dir, &problems, &warnings);
  std::vector<std::string> out;
  for (const Error& e : problems) out.push_back(e.what());
  for (const std::string& w : warnings) out.push_back("warning: " + w);
  return out;
}

#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(Index, SoundShardedCheckpointOpensWithEveryTensor) {
  TempDir dir;
  write_three_shards(dir.path());
  Catalog c = open_catalog(dir.path());
  EXPECT_EQ(c.shards.size(), 3u);
  ASSERT_EQ(c.tensors.size(), 4u);
  EXPECT_EQ(c.shards[c.find("c")->shard].file, "model-00002-of-00003.safetensors");
  EXPECT_EQ(c.index_total_size, 96u);
  EXPECT_TRUE(all_problems(dir.path()).empty());
}

TEST(Index, AbsoluteShardPathIsRejected) {
  TempDir dir;
  write_three_shards(dir.path());
  auto index = read_index(dir.path());
  index["weight_map"]["a"] = (dir / "model-00001-of-00003.safetensors").string();
  write_index(dir.path(), index);
  EXPECT_CONTAINS(first_problem(dir.path()), "is absolute");
}

TEST(Index, DotDotShardPathIsRejected) {
  TempDir dir;
  write_three_shards(dir / "ckpt");
  auto index = read_index(dir / "ckpt");
  index["weight_map"]["a"] = "../ckpt/model-00001-of-00003.safetensors";
  write_index(dir / "ckpt", index);
  EXPECT_CONTAINS(first_problem(dir / "ckpt"), "contains '..'");
}

TEST(Index, SymlinkLeavingTheCheckpointIsRejected) {
  TempDir dir;
  write_three_shards(dir / "ckpt");
  fs::rename(dir / "ckpt" / "model-00003-of-00003.safetensors", dir / "outside.safetensors");
  fs::create_symlink(dir / "outside.safetensors", dir / "ckpt" / "model-00003-of-00003.safetensors");
  EXPECT_CONTAINS(first_problem(dir / "ckpt"), "outside the checkpoint directory");
}

TEST(Index, SymlinkInsideTheCheckpointIsAccepted) {
  TempDir dir;
  write_three_shards(dir / "ckpt");
  fs::create_directories(dir / "ckpt" / "blobs");
  fs::rename(dir / "ckpt" / "model-00003-of-00003.safetensors", dir / "ckpt" / "blobs" / "3");
  fs::create_symlink("blobs/3", dir / "ckpt" / "model-00003-of-00003.safetensors");
  EXPECT_EQ(open_catalog(dir / "ckpt").tensors.size(), 4u);
}

// The Hugging Face hub cache: every file of a snapshot is a symlink to ../../blobs/<sha256>, index included.
TEST(Index, HubCacheSnapshotOfBlobSymlinksLoadsWithTheSameDigests) {
  TempDir dir;
  write_three_shards(dir / "plain");
  write_three_shards(dir / "ckpt");
  const fs::path snapshot = testing::move_into_hub_cache(dir / "ckpt", dir / "hub", "models--org--name");
  ASSERT_TRUE(fs::is_symlink(snapshot / "model-00001-of-00003.safetensors"));
  const std::vector<std::string> expected = digest_checkpoint(open_catalog(dir / "plain"));
  EXPECT_EQ(digest_checkpoint(open_catalog(snapshot)), expected);
  EXPECT_EQ(digest_checkpoint(open_catalog(snapshot / "model.safetensors.index.json")), expected);
  EXPECT_TRUE(all_problems(snapshot).empty());
}

TEST(Index, HubCacheSingleFileSymlinkLoads) {
  TempDir dir;
  save_sharded({tensor("a", 4), tensor("b", 8)}, dir / "ckpt", {});
  ASSERT_TRUE(fs::exists(dir / "ckpt" / "model.safetensors"));
  const fs::path snapshot = testing::move_into_hub_cache(dir / "ckpt", dir / "hub", "models--org--name");
  EXPECT_EQ(open_catalog(snapshot).tensors.size(), 2u);
  EXPECT_EQ(open_catalog(snapshot / "model.safetensors").tensors.size(), 2u);
}

// The repository folder bounds the symlinks: not the blobs of another repository, and '..' in weight_map stays banned.
TEST(Index, HubCacheSymlinkIntoAnotherRepositoryIsRejected) {
  TempDir dir;
  write_three_shards(dir / "ckpt");
  const fs::path snapshot = testing::move_into_hub_cache(dir / "ckpt", dir / "hub", "models--org--name");
  write_three_shards(dir / "other");
  const fs::path other = testing::move_into_hub_cache(dir / "other", dir / "hub", "models--org--other");
  const fs::path shard = "model-00003-of-00003.safetensors";
  const fs::path blob = fs::read_symlink(other / shard).filename();
  fs::remove(snapshot / shard);
  fs::create_symlink(fs::path("../../../models--org--other/blobs") / blob, snapshot / shard);
  const std::string problem = first_problem(snapshot);
  EXPECT_CONTAINS(problem, "outside the checkpoint directory");
  EXPECT_CONTAINS(problem,
                  "Hugging Face cache repository '" + fs::canonical(dir / "hub" / "models--org--name").string());
}

TEST(Index, HubCacheStillRejectsDotDotInWeightMap) {
  TempDir dir;
  write_three_shards(dir / "ckpt");
  const fs::path snapshot = testing::move_into_hub_cache(dir / "ckpt", dir / "hub", "models--org--name");
  const fs::path blob = fs::read_symlink(snapshot / "model-00001-of-00003.safetensors");
  fs::path index_file = fs::canonical(snapshot / "model.safetensors.index.json");
  auto index = nlohmann::json::parse(testing::read_file(index_file));
  index["weight_map"]["a"] = blob.string();  // "../../blobs/<sha256>"
  fs::remove(snapshot / "model.safetensors.index.json");
  write_index(snapshot, index);
  EXPECT_CONTAINS(first_problem(snapshot), "contains '..'");
}

// Only a real cache repository widens the bound: a folder merely named models--* without blobs/ does not.
TEST(Index, FolderNamedLikeAHubRepositoryWithoutBlobsIsNoCache) {
  TempDir dir;
  const fs::path repo = dir / "models--org--name";
  write_three_shards(repo / "snapshots" / "main");
  fs::create_directories(repo / "elsewhere");
  const fs::path shard = repo / "snapshots" / "main" / "model-00003-of-00003.safetensors";
  fs::rename(shard, repo / "elsewhere" / "3");
  fs::create_symlink("../../elsewhere/3", shard);
  EXPECT_CONTAINS(first_problem(repo / "snapshots" / "main"), "outside the checkpoint directory");
}

TEST(Index, MissingShardFileIsNamed) {
  TempDir dir;
  write_three_shards(dir.path());
  fs::remove(dir / "model-00002-of-00003.safetensors");
  EXPECT_CONTAINS(first_problem(dir.path()), "shard 'model-00002-of-00003.safetensors' is listed in weight_map but");
}

// A FIFO opened for reading waits for a writer forever: it is refused by what it is, naming it (issue 13).
TEST(Index, AShardThatIsAFifoIsRefusedNotWaitedOn) {
  TempDir dir;
  write_three_shards(dir.path());
  const fs::path shard = dir / "model-00002-of-00003.safetensors";
  fs::remove(shard);
  ASSERT_EQ(mkfifo(shard.c_str(), 0600), 0);
  EXPECT_CONTAINS(first_problem(dir.path()), "'" + shard.string() + "' is a FIFO, expected a regular file");
}

TEST(Index, MappedTensorMissingFromItsShardIsReported) {
  TempDir dir;
  write_three_shards(dir.path());
  auto index = read_index(dir.path());
  index["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  write_index(dir.path(), index);
  EXPECT_CONTAINS(first_problem(dir.path()),
                  "maps tensor 'ghost' to 'model-00001-of-00003.safetensors', but that shard does not hold it");
}

TEST(Index, TensorMappedToTheWrongShardSaysWhereItIs) {
  TempDir dir;
  write_three_shards(dir.path());
  auto index = read_index(dir.path());
  index["weight_map"]["a"] = "model-00003-of-00003.safetensors";  // shard 1 stays listed through "b"
  write_index(dir.path(), index);
  EXPECT_CONTAINS(first_problem(dir.path()),
                  "maps tensor 'a' to 'model-00003-of-00003.safetensors', but that shard does "
                  "not hold it (it is in 'model-00001-of-00003.safetensors')");
}

TEST(Index, TensorInTwoShardsIsRejected) {
  TempDir dir;
  write_three_shards(dir / "ckpt");
  // Replace shard 3 ("d") with a shard holding both "d" and "c".
  fs::remove(dir / "ckpt" / "model-00003-of-00003.safetensors");
  save_sharded({tensor("c", 8), tensor("d", 8)}, dir / "other");
  fs::rename(dir / "other" / "model.safetensors", dir / "ckpt" / "model-00003-of-00003.safetensors");
  EXPECT_CONTAINS(
      first_problem(dir / "ckpt"),
      "tensor 'c' lives in two shards: 'model-00002-of-00003.safetensors' and 'model-00003-of-00003.safetensors'");
}

TEST(Index, TensorMissingFromWeightMapIsReported) {
  TempDir dir;
  write_three_shards(dir.path());
  auto index = read_index(dir.path());
  index["weight_map"].erase("b");
  write_index(dir.path(), index);
  EXPECT_CONTAINS(first_problem(dir.path()),
                  "tensor 'b' is in shard 'model-00001-of-00003.safetensors' but not in weight_map");
}

TEST(Index, DisagreeingTotalSizeIsAWarningNotAFailure) {
  TempDir dir;
  write_three_shards(dir.path());
  auto index = read_index(dir.path());
  index["metadata"]["total_size"] = 97;
  write_index(dir.path(), index);
  EXPECT_EQ(open_catalog(dir.path()).tensors.size(), 4u);
  auto problems = all_problems(dir.path());
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_CONTAINS(problems[0], "warning: ");
  EXPECT_CONTAINS(problems[0], "metadata.total_size is 97 but the shards hold 96 bytes");
}

TEST(Index, EveryProblemIsListedNotJustTheFirst) {
  TempDir dir;
  write_three_shards(dir.path());
  auto index = read_index(dir.path());
  index["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  index["weight_map"].erase("d");
  write_index(dir.path(), index);
  testing::write_file(dir / "model-00002-of-00003.safetensors", "garbage!garbage!");
  auto problems = all_problems(dir.path());
  EXPECT_EQ(problems.size(), 2u);  // the broken shard 2 and the ghost; shard 3 is no longer in the index at all
  EXPECT_CONTAINS(first_problem(dir.path()), "has 2 problems");
}

TEST(IndexParse, MalformedIndexesAreRejected) {
  struct Case {
    const char* json;
    const char* expected;
  } cases[] = {
      {"[]", "index is not a JSON object"},
      {R"({"metadata":{}})", "index has no weight_map"},
      {R"({"weight_map":[]})", "weight_map is not a JSON object"},
      {R"({"weight_map":{"a":1}})", "weight_map entry 'a' is not a file name"},
      {R"({"weight_map":{"a":"x","a":"y"}})", "has the key 'a' more than once"},
      {R"({"metadata":{"total_size":-4},"weight_map":{}})", "metadata.total_size -4 is not a non-negative integer"},
      {R"({"weight_map":{})", "is not valid JSON"},
      // Loading nothing while shards sit beside the index would pass for success.
      {R"({"metadata":{},"weight_map":{}})", "weight_map maps no tensor to a shard"},
      // An object past the depth limit once crashed the strict parser.
      {"[[[[[[[[[[[[[[[[[{\"a\":1}]]]]]]]]]]]]]]]]]", "index nests deeper than 16 levels"},
      // Numbers past a double's range are a problem with the file, not an internal error.
      {R"({"metadata":{"total_size":1e400},"weight_map":{"a":"x"}})", "number overflow"},
      // A float past 2^64 (found by fuzz_index: its conversion to an integer was undefined behaviour).
      {R"({"metadata":{"total_size":25555555555555555555555555555555555555555555555555552},"weight_map":{"a":"x"}})",
       "is not a non-negative integer"},
      {R"({"metadata":{"total_size":18446744073709551616.0},"weight_map":{"a":"x"}})", "is not a non-negative integer"},
  };
  for (const Case& c : cases) {
    try {
      parse_index(c.json, "idx.json");
      ADD_FAILURE() << "accepted " << c.json;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint);
      EXPECT_CONTAINS(e.what(), c.expected);
      EXPECT_CONTAINS(e.what(), "'idx.json'");
    }
  }
  const std::string million_digits = R"({"metadata":{"total_size":)" + std::string(1'000'000, '9') + "}}";
  try {
    parse_index(million_digits, "idx.json");
    ADD_FAILURE() << "accepted a million-digit total_size";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorruptCheckpoint);
    EXPECT_CONTAINS(e.what(), "number overflow");
    EXPECT_LT(std::string(e.what()).size(), 500u) << "the message must not quote a million digits";
  }
  EXPECT_EQ(parse_index(R"({"metadata":{"total_size":12.0},"weight_map":{"a":"x"}})", "x").total_size, 12u);
}

}  // namespace
}  // namespace shardcast
