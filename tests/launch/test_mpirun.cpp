// Real mpirun jobs of `shardcast load`: every rank bit-exact for every placement, each byte read once per node,
// a failing load fails every rank with a clear message, and /dev/shm is clean afterwards.
#include <gtest/gtest.h>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "coordinator/synth.h"
#include "shm/segment.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

testing::CommandResult mpirun(int ranks, const std::vector<std::string>& args, int ranks_per_node = 0) {
  std::vector<std::string> argv{"/usr/bin/mpirun", "-np",       std::to_string(ranks),
                                "--oversubscribe", "--bind-to", "none"};
  if (ranks_per_node > 0) {
    argv.push_back("-x");
    argv.push_back("SHARDCAST_RANKS_PER_NODE=" + std::to_string(ranks_per_node));
  }
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  argv.push_back(SHARDCAST_CLI_PATH);
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::run_command(argv, std::chrono::seconds(180));
}

std::vector<std::string> segments_in_dev_shm() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator("/dev/shm")) {
    if (e.path().filename().string().rfind(shm::kNamePrefix, 0) == 0) names.push_back(e.path().filename().string());
  }
  return names;
}

std::string expected_digest(const fs::path& checkpoint) {
  std::string text;
  for (const auto& line : digest_checkpoint(open_catalog(checkpoint))) text += line + "\n";
  return text;
}

struct Case {
  int ranks;
  std::string placement;
  CheckpointFormat format;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.ranks << " ranks, " << c.placement << ", " << format_name(c.format);
}

class MpirunLoad : public ::testing::TestWithParam<Case> {};

TEST_P(MpirunLoad, EveryRankIsBitExactAndStorageIsReadOnce) {
  const Case c = GetParam();
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 4'000'000, 1'000'000, c.format, true);
  auto r = mpirun(c.ranks, {"load", (dir / "ckpt").string(), "--placement", c.placement, "--digest-out",
                            (dir / "digest{rank}").string(), "--report-out", (dir / "report{rank}.json").string()});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string expected = expected_digest(dir / "ckpt");
  uint64_t read = 0;
  for (int rank = 0; rank < c.ranks; ++rank) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(rank))), expected) << "rank " << rank;
    auto report = nlohmann::json::parse(testing::read_file(dir / ("report" + std::to_string(rank) + ".json")));
    EXPECT_EQ(report["world_size"], c.ranks);
    EXPECT_EQ(report["local_size"], c.ranks);
    EXPECT_EQ(report["launcher"], "mpi");
    read += report["rank_bytes_read"].get<uint64_t>();
  }
  uint64_t files = 0;
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) files += e.file_size();
  // Every tensor byte once, plus what rank 0 reads to build the catalog (index, headers or pickles): far less than one
  // more shard (a quarter of the checkpoint), which is what reading any shard twice would add.
  EXPECT_GE(read, 4'000'000u);
  EXPECT_LT(read, files + files / 10) << "a shard was read twice on one node";
  EXPECT_TRUE(segments_in_dev_shm().empty());
}

INSTANTIATE_TEST_SUITE_P(RanksAndPlacements, MpirunLoad,
                         ::testing::Values(Case{1, "shared", CheckpointFormat::kSafetensors},
                                           Case{2, "cow", CheckpointFormat::kSafetensors},
                                           Case{4, "shared", CheckpointFormat::kSafetensors},
                                           Case{4, "private", CheckpointFormat::kSafetensors},
                                           Case{2, "shared", CheckpointFormat::kTorchBin}),
                         [](const auto& info) {
                           return std::to_string(info.param.ranks) + "Ranks_" + info.param.placement + "_" +
                                  std::string(format_name(info.param.format));
                         });

class VirtualNodes : public ::testing::TestWithParam<std::tuple<int, CheckpointFormat>> {};

// K virtual nodes of 2 ranks each on this machine: each node has its own segments and leader; the leaders split the
// shards, read only their part and exchange the rest, so the job reads each byte once.
TEST_P(VirtualNodes, EveryRankIsBitExactAndTheJobReadsEachByteOnce) {
  const int nodes = std::get<0>(GetParam());
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 6'000'000, 1'000'000, std::get<1>(GetParam()), true);
  auto r = mpirun(2 * nodes,
                  {"load", (dir / "ckpt").string(), "--digest-out", (dir / "digest{rank}").string(), "--report-out",
                   (dir / "report{rank}.json").string()},
                  /*ranks_per_node=*/2);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string expected = expected_digest(dir / "ckpt");
  uint64_t read = 0;
  for (int rank = 0; rank < 2 * nodes; ++rank) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(rank))), expected) << "rank " << rank;
    auto report = nlohmann::json::parse(testing::read_file(dir / ("report" + std::to_string(rank) + ".json")));
    EXPECT_EQ(report["node_count"], nodes);
    EXPECT_EQ(report["node"], rank / 2);
    EXPECT_EQ(report["local_size"], 2);
    read += report["rank_bytes_read"].get<uint64_t>();
  }
  uint64_t files = 0;
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) files += e.file_size();
  EXPECT_GE(read, 6'000'000u);
  EXPECT_LT(read, files + files / 10) << "the job read some shard more than once";
  EXPECT_TRUE(segments_in_dev_shm().empty());
}

INSTANTIATE_TEST_SUITE_P(TwoAndThree, VirtualNodes,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Values(CheckpointFormat::kSafetensors,
                                                                                       CheckpointFormat::kTorchBin)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "Nodes_" +
                                  std::string(format_name(std::get<1>(info.param)));
                         });

TEST(Mpirun, AMissingCheckpointFailsEveryRankWithRankZerosReason) {
  TempDir dir;
  auto r = mpirun(3, {"load", (dir / "missing").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("checkpoint '" + (dir / "missing").string() + "' does not exist"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rank 0 could not read checkpoint"), std::string::npos) << r.err;
  EXPECT_TRUE(segments_in_dev_shm().empty());
}

}  // namespace
}  // namespace shardcast
