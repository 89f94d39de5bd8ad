// Real mpirun jobs of `shardcast load`: every rank bit-exact for every placement, each byte read once per node,
// a failing load fails every rank with a clear message, and /dev/shm is clean afterwards.
#include <gtest/gtest.h>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "coordinator/synth.h"
#include "tests/support/load_job.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

testing::CommandResult mpirun(int ranks, const std::vector<std::string>& args, int ranks_per_node = 0,
                              const std::string& program = SHARDCAST_CLI_PATH, const std::string& job_id = "") {
  std::vector<std::string> argv{"/usr/bin/mpirun", "-np",       std::to_string(ranks),
                                "--oversubscribe", "--bind-to", "none"};
  if (ranks_per_node > 0) {
    argv.push_back("-x");
    argv.push_back("SHARDCAST_RANKS_PER_NODE=" + std::to_string(ranks_per_node));
  }
  if (!job_id.empty()) {
    argv.push_back("-x");
    argv.push_back("SHARDCAST_JOB_ID=" + job_id);
  }
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  argv.push_back(program);
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::run_command(argv, std::chrono::seconds(180));
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
  testing::evict_page_cache(dir / "ckpt");  // the mapped default reads what is not in the page cache
  std::vector<std::string> args{"load", (dir / "ckpt").string(), "--placement", c.placement};
  for (const std::string& a : testing::load_outputs(dir.path())) args.push_back(a);
  auto r = mpirun(c.ranks, args);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const testing::LoadJob job = testing::expect_bit_exact_job(dir.path(), c.ranks, dir / "ckpt");
  for (const auto& report : job.reports) {
    EXPECT_EQ(report["local_size"], c.ranks);
    EXPECT_EQ(report["launcher"], "openmpi");
    EXPECT_EQ(report["communicator"], "mpi");
  }
  testing::expect_read_once(job, 4'000'000, dir / "ckpt");
  EXPECT_TRUE(testing::segments_in_dev_shm(job.job_id).empty());
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
  testing::evict_page_cache(dir / "ckpt");  // the mapped default reads what is not in the page cache
  std::vector<std::string> args{"load", (dir / "ckpt").string()};
  for (const std::string& a : testing::load_outputs(dir.path())) args.push_back(a);
  auto r = mpirun(2 * nodes, args, /*ranks_per_node=*/2);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const testing::LoadJob job = testing::expect_bit_exact_job(dir.path(), 2 * nodes, dir / "ckpt");
  for (int rank = 0; rank < 2 * nodes; ++rank) {
    EXPECT_EQ(job.reports[rank]["node_count"], nodes);
    EXPECT_EQ(job.reports[rank]["node"], rank / 2);
    EXPECT_EQ(job.reports[rank]["local_size"], 2);
  }
  testing::expect_read_once(job, 6'000'000, dir / "ckpt");
  EXPECT_TRUE(testing::segments_in_dev_shm(job.job_id).empty());
}

INSTANTIATE_TEST_SUITE_P(TwoAndThree, VirtualNodes,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Values(CheckpointFormat::kSafetensors,
                                                                                       CheckpointFormat::kTorchBin)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "Nodes_" +
                                  std::string(format_name(std::get<1>(info.param)));
                         });

// A device_map mixing the node's shared copy, disk and the GPU ring (host stand-in) on 4 ranks: bit-exact on every
// rank, the same resolved map and bytes per device on every rank, the cpu part mapped from the checkpoint files.
TEST(Mpirun, AMixedDeviceMapIsBitExactOnEveryRankAndMapsTheCpuPart) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 4'000'000, 1'000'000, CheckpointFormat::kSafetensors, true);
  std::vector<std::string> args{"load",
                                (dir / "ckpt").string(),
                                "--device-map",
                                "model.layers.0=cuda,model.layers.1=disk,=cpu",
                                "--device-stand-in",
                                "--ring",
                                "2x64KiB"};
  for (const std::string& a : testing::load_outputs(dir.path())) args.push_back(a);
  auto r = mpirun(4, args);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const testing::LoadJob job = testing::expect_bit_exact_job(dir.path(), 4, dir / "ckpt");
  const nlohmann::json& first = job.reports[0];
  EXPECT_EQ(first["device_map"],
            nlohmann::json::parse(R"({"model.layers.0": "cuda", "model.layers.1": "disk", "": "cpu"})"));
  const uint64_t cpu = first["device_bytes"]["cpu"], cuda = first["device_bytes"]["cuda"],
                 disk = first["device_bytes"]["disk"];
  EXPECT_EQ(cpu + cuda + disk, first["tensor_bytes"].get<uint64_t>());
  EXPECT_GT(cuda, 0u);
  EXPECT_GT(disk, 0u);
  for (const auto& report : job.reports) {
    EXPECT_EQ(report["device_map"], first["device_map"]);
    EXPECT_EQ(report["device_bytes"], first["device_bytes"]);
    // The cpu part is mapped from the files (map_files auto); the node stages the two 64 KiB ring slots at most.
    EXPECT_GE(report["node_bytes_mapped"].get<uint64_t>(), cpu);
    EXPECT_LE(report["node_bytes_mapped"].get<uint64_t>(), cpu + 4 * 64);
    EXPECT_LE(report["node_bytes_staged"].get<uint64_t>(), 64 * 1024 + 2 * 65536);
  }
  EXPECT_TRUE(testing::segments_in_dev_shm(job.job_id).empty());
}

TEST(Mpirun, AMissingCheckpointFailsEveryRankWithRankZerosReason) {
  TempDir dir;
  const std::string job = "missing-checkpoint-" + std::to_string(getpid());
  auto r = mpirun(3, {"load", (dir / "missing").string()}, 0, SHARDCAST_CLI_PATH, job);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("checkpoint '" + (dir / "missing").string() + "' does not exist"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rank 0 could not read checkpoint"), std::string::npos) << r.err;
  EXPECT_TRUE(testing::segments_in_dev_shm(job).empty());
}

// A rank that never reaches a collective: rank 0 names it at the timeout and the job ends (MPI cannot cancel the
// collective, so the communicator aborts), well before the straggler would have arrived.
TEST(Mpirun, AStragglerIsNamedAtTheTimeoutAndTheJobEnds) {
  const auto start = std::chrono::steady_clock::now();
  auto r = mpirun(3, {"2"}, 0, SHARDCAST_MPI_STRAGGLER_PATH);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("rank 0 of 3 timed out after 2 s in 'straggler test' waiting for rank(s) 2"), std::string::npos)
      << r.err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

// --keep under mpirun: the next job (other ranks) attaches to the node's kept copy, bit-exact, reading and staging
// nothing; `shardcast gc --kept` removes it and nothing is left. (The store is in a directory of the test's own, so
// that the user's kept copies in /dev/shm are neither reused nor removed.)
TEST(Mpirun, AKeptCopyServesTheNextJobWithoutReading) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 4'000'000, 1'000'000, CheckpointFormat::kSafetensors, true);
  fs::create_directories(dir / "shm");
  const std::string shm = (dir / "shm").string();
  std::vector<std::string> args{"load", (dir / "ckpt").string(), "--map-files", "never", "--keep", "10m", "--shm-dir",
                                shm};
  for (const std::string& a : testing::load_outputs(dir.path())) args.push_back(a);
  auto r = mpirun(2, args);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const testing::LoadJob first = testing::expect_bit_exact_job(dir.path(), 2, dir / "ckpt");
  for (const auto& report : first.reports) EXPECT_EQ(report["kept"]["state"], "kept");
  const std::string key = first.reports[0]["kept"]["key"];

  r = mpirun(4, args);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("reused kept copy " + key), std::string::npos) << r.out;
  testing::expect_reused_kept_copy(testing::expect_bit_exact_job(dir.path(), 4, dir / "ckpt"), key);

  auto gc = testing::run_cli({"gc", "--kept", "--shm-dir", shm});
  EXPECT_NE(gc.out.find("removed kept copy " + key), std::string::npos) << gc.out;
  EXPECT_TRUE(fs::is_empty(dir / "shm"));
}

}  // namespace
}  // namespace shardcast
