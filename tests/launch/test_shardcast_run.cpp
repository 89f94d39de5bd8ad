// Launches without MPI: shardcast-run (one node, and K launchers simulating K nodes), and a torchrun-style environment
// set by hand. Every rank bit-exact, each byte read once per job, nothing left in /dev/shm; a rank that dies makes
// shardcast-run stop the others and say which rank failed, within 30 s; signals reach the ranks.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <future>

#include <fmt/format.h>

#include "coordinator/synth.h"
#include "shm/kept_copies.h"
#include "tests/support/load_job.h"
#include "tests/support/run_command.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

// A port the kernel just handed out and took back: free unless another process grabs it in the meantime.
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::string> load_command(const TempDir& dir) {
  std::vector<std::string> argv{SHARDCAST_CLI_PATH, "load", (dir / "ckpt").string()};
  for (const std::string& a : testing::load_outputs(dir.path())) argv.push_back(a);
  return argv;
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(ShardcastRun, FourRanksOnOneNodeAreBitExactAndReadEachByteOnce) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 4'000'000, 1'000'000, CheckpointFormat::kSafetensors, true);
  testing::evict_page_cache(dir / "ckpt");  // the mapped default reads what is not in the page cache
  auto r = testing::run_command(concat({SHARDCAST_RUN_PATH, "--standalone", "-n", "4"}, load_command(dir)),
                                std::chrono::seconds(180));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("[rank0]: loaded "), std::string::npos) << "rank 0's summary line, prefixed: " << r.out;
  const testing::LoadJob job = testing::expect_bit_exact_job(dir.path(), 4, dir / "ckpt");
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_EQ(job.reports[rank]["launcher"], "torchrun");
    EXPECT_EQ(job.reports[rank]["communicator"], "store");
    EXPECT_EQ(job.reports[rank]["local_rank"], rank);
    EXPECT_EQ(job.reports[rank]["node_count"], 1);
  }
  testing::expect_read_once(job, 4'000'000, dir / "ckpt");
  EXPECT_TRUE(testing::segments_in_dev_shm(job.job_id).empty());
}

// K shardcast-run processes, as on K nodes (--nnodes K --node-rank i), with virtual nodes of 2 ranks each.
class ShardcastRunNodes : public ::testing::TestWithParam<int> {};

TEST_P(ShardcastRunNodes, EveryRankIsBitExactAndTheJobReadsEachByteOnce) {
  const int nodes = GetParam();
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 6'000'000, 1'000'000, CheckpointFormat::kSafetensors, true);
  testing::evict_page_cache(dir / "ckpt");  // the mapped default reads what is not in the page cache
  const std::string port = std::to_string(free_port());
  std::vector<std::future<testing::CommandResult>> launchers;
  for (int node = 0; node < nodes; ++node) {
    auto argv = concat(
        {"/usr/bin/env", "SHARDCAST_RANKS_PER_NODE=2", SHARDCAST_RUN_PATH, "-n", "2", "--nnodes", std::to_string(nodes),
         "--node-rank", std::to_string(node), "--master-port", port, "--rdzv-id", "test-" + port},
        load_command(dir));
    launchers.push_back(
        std::async(std::launch::async, [argv] { return testing::run_command(argv, std::chrono::seconds(180)); }));
  }
  for (int node = 0; node < nodes; ++node) {
    auto r = launchers[node].get();
    EXPECT_EQ(r.exit_code, 0) << "node " << node << ": " << r.out << r.err;
  }
  const testing::LoadJob job = testing::expect_bit_exact_job(dir.path(), 2 * nodes, dir / "ckpt");
  for (int rank = 0; rank < 2 * nodes; ++rank) {
    EXPECT_EQ(job.reports[rank]["node_count"], nodes);
    EXPECT_EQ(job.reports[rank]["node"], rank / 2);
    EXPECT_EQ(job.reports[rank]["job_id"], "torchrun-test-" + port);
  }
  testing::expect_read_once(job, 6'000'000, dir / "ckpt");
  EXPECT_TRUE(testing::segments_in_dev_shm(job.job_id).empty());
}

INSTANTIATE_TEST_SUITE_P(TwoAndThree, ShardcastRunNodes, ::testing::Values(2, 3),
                         [](const auto& info) { return std::to_string(info.param) + "Nodes"; });

// What torchrun (or any script) gives its workers, set by the test itself: no launcher process at all.
TEST(TorchrunEnvironment, RanksStartedByHandMeetAndAreBitExact) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 4'000'000, 1'000'000, CheckpointFormat::kTorchBin, true);
  testing::evict_page_cache(dir / "ckpt");  // the mapped default reads what is not in the page cache
  const std::string port = std::to_string(free_port());
  const int ranks = 3;
  std::vector<std::future<testing::CommandResult>> procs;
  for (int rank = 0; rank < ranks; ++rank) {
    auto argv =
        concat({"/usr/bin/env", "RANK=" + std::to_string(rank), "WORLD_SIZE=3", "LOCAL_RANK=" + std::to_string(rank),
                "LOCAL_WORLD_SIZE=3", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port},
               load_command(dir));
    procs.push_back(std::async(std::launch::async, [argv] { return testing::run_command(argv); }));
  }
  for (int rank = 0; rank < ranks; ++rank) {
    auto r = procs[rank].get();
    EXPECT_EQ(r.exit_code, 0) << "rank " << rank << ": " << r.out << r.err;
  }
  const testing::LoadJob job = testing::expect_bit_exact_job(dir.path(), ranks, dir / "ckpt");
  for (const auto& report : job.reports) EXPECT_EQ(report["launcher"], "torchrun");
  testing::expect_read_once(job, 4'000'000, dir / "ckpt");
  EXPECT_TRUE(testing::segments_in_dev_shm(job.job_id).empty());
}

TEST(TorchrunEnvironment, AMissingRankIsNamedWhenTheWaitTimesOut) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 500'000, CheckpointFormat::kSafetensors, true);
  const std::string port = std::to_string(free_port());
  std::vector<std::future<testing::CommandResult>> procs;
  for (int rank : {0, 1}) {  // rank 2 of 3 never comes
    auto argv = concat({"/usr/bin/env", "RANK=" + std::to_string(rank), "WORLD_SIZE=3", "MASTER_ADDR=127.0.0.1",
                        "MASTER_PORT=" + port, "SHARDCAST_JOB_ID=missing-rank-" + port},
                       concat(load_command(dir), {"--timeout", "3"}));
    procs.push_back(std::async(std::launch::async, [argv] { return testing::run_command(argv); }));
  }
  for (auto& p : procs) {
    auto r = p.get();
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("timed out after 3 s"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("waiting for rank(s) 2"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(testing::segments_in_dev_shm("missing-rank-" + port).empty());
}

// Rank 0 hosts the store; when it dies the others must say so at once, not wait out their timeout.
TEST(TorchrunEnvironment, LosingTheStoresHostIsReportedAtOnce) {
  const std::string port = std::to_string(free_port());
  const std::vector<std::string> env{"/usr/bin/env", "WORLD_SIZE=3", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port};
  auto rank0 = std::async(std::launch::async, [&] {
    return testing::run_command(concat(concat(env, {"RANK=0", "/usr/bin/timeout", "-s", "KILL", "6"}),
                                       {SHARDCAST_CLI_PATH, "info", "--join", "--timeout", "60"}));
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::run_command(concat(env, {"RANK=1", SHARDCAST_CLI_PATH, "info", "--join", "--timeout", "60"}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("rank 1 of 3 lost the rendezvous store at 127.0.0.1:" + port + " (hosted by rank 0)"),
            std::string::npos)
      << r.err;
  rank0.get();
}

TEST(TorchrunEnvironment, RanksOfDifferentJobsRefuseToMix) {
  const std::string port = std::to_string(free_port());
  std::vector<std::future<testing::CommandResult>> procs;
  for (int rank : {0, 1}) {
    procs.push_back(std::async(std::launch::async, [&, rank] {
      return testing::run_command({"/usr/bin/env", "RANK=" + std::to_string(rank), "WORLD_SIZE=2",
                                   "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port,
                                   std::string("SHARDCAST_JOB_ID=job") + (rank == 0 ? "A" : "B"), SHARDCAST_CLI_PATH,
                                   "info", "--join", "--timeout", "30"});
    }));
  }
  for (auto& p : procs) {
    auto r = p.get();
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("rank 1 belongs to job 'jobB' but rank 0 to job 'jobA'"), std::string::npos) << r.err;
  }
}

// Rank 2 dies (SIGKILL) while the others wait for it: the launcher stops them and exits with rank 2's status.
TEST(ShardcastRun, AKilledRankStopsTheOthersAndIsNamedWithin30Seconds) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 500'000, CheckpointFormat::kSafetensors, true);
  const std::string load = fmt::format("exec {} load {}", SHARDCAST_CLI_PATH, (dir / "ckpt").string());
  const std::string script = "if [ \"$RANK\" = 2 ]; then sleep 1; kill -9 $$; fi; " + load;
  const std::string job = "killed-waiting-" + std::to_string(getpid());
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::run_command(
      {"/usr/bin/env", "SHARDCAST_JOB_ID=" + job, SHARDCAST_RUN_PATH, "-n", "4", "/bin/sh", "-c", script},
      std::chrono::seconds(60));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.exit_code, 128 + 9) << r.err;
  EXPECT_NE(r.err.find("shardcast-run: rank 2 (pid "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("was killed by signal 9"), std::string::npos) << r.err;
  EXPECT_LT(seconds, 30.0);
  EXPECT_TRUE(testing::segments_in_dev_shm(job).empty());
}

TEST(ShardcastRun, AFailingRanksExitStatusBecomesTheLaunchers) {
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::run_command({SHARDCAST_RUN_PATH, "-n", "3", "/bin/sh", "-c",
                                 "if [ \"$RANK\" = 1 ]; then echo bad input >&2; exit 7; fi; sleep 60"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30))
      << "the sleeping ranks were not stopped";
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_NE(r.err.find("[rank1]: bad input\n"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("shardcast-run: rank 1 (pid "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exited with status 7; stopping the other ranks"), std::string::npos) << r.err;
}

TEST(ShardcastRun, SigtermIsForwardedToEveryRank) {
  // The launcher in the background, then SIGTERM to it alone: each rank's trap must run.
  // Once both ranks said they set their trap: SIGTERM to the launcher alone.
  const std::string script = fmt::format(
      "out=$(mktemp); {} -n 2 /bin/sh -c 'trap \"echo rank $RANK got TERM; exit 3\" TERM; echo ready; sleep 30 & wait' "
      ">$out & launcher=$!; until [ \"$(grep -c ready $out)\" = 2 ]; do sleep 0.05; done; kill -TERM $launcher; "
      "wait $launcher; status=$?; cat $out; rm $out; exit $status",
      SHARDCAST_RUN_PATH);
  auto r = testing::run_command({"/bin/sh", "-c", script}, std::chrono::seconds(60));
  EXPECT_EQ(r.exit_code, 128 + 15) << r.out << r.err;
  EXPECT_NE(r.out.find("[rank0]: rank 0 got TERM"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[rank1]: rank 1 got TERM"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("shardcast-run: got Terminated, passing it to the ranks"), std::string::npos) << r.err;
}

TEST(ShardcastRun, SetsTheEnvironmentTorchrunSets) {
  auto r = testing::run_command({SHARDCAST_RUN_PATH, "-n", "2", "--nnodes", "3", "--node-rank", "1", "--master-addr",
                                 "10.0.0.1", "--master-port", "1234", "--rdzv-id", "job7", "/bin/sh", "-c",
                                 "echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $GROUP_RANK $GROUP_WORLD_SIZE "
                                 "$MASTER_ADDR $MASTER_PORT $TORCHELASTIC_RUN_ID"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[rank2]: 2 0 6 2 1 3 10.0.0.1 1234 job7\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[rank3]: 3 1 6 2 1 3 10.0.0.1 1234 job7\n"), std::string::npos) << r.out;
}

TEST(ShardcastRun, BadArgumentsAreRefusedClearly) {
  auto r = testing::run_command({SHARDCAST_RUN_PATH, "--nnodes", "2", "--node-rank", "2", "/bin/true"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--node-rank 2 is not in 0 .. 1"), std::string::npos) << r.err;
  r = testing::run_command({SHARDCAST_RUN_PATH, "-n", "2"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no COMMAND given"), std::string::npos) << r.err;
  r = testing::run_command({SHARDCAST_RUN_PATH, "--nproc", "2", "/bin/true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown option '--nproc'"), std::string::npos) << r.err;
  r = testing::run_command({SHARDCAST_RUN_PATH, "-n", "1", "--", "/bin/echo", "-x"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "[rank0]: -x\n");
  r = testing::run_command({SHARDCAST_RUN_PATH, "-n", "1", "/nonexistent/program"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("cannot run '/nonexistent/program'"), std::string::npos) << r.err;
}

// --keep under shardcast-run: the next job attaches to the kept copy (bit-exact, nothing staged or read); the
// launcher's start removes an expired copy, as `shardcast gc` would. (SHARDCAST_SHM_DIR: a store of the test's own.)
TEST(ShardcastRun, AKeptCopyServesTheNextJobAndAnExpiredOneGoesAtTheNextStart) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 4'000'000, 1'000'000, CheckpointFormat::kSafetensors, true);
  fs::create_directories(dir / "shm");
  const std::string env = "SHARDCAST_SHM_DIR=" + (dir / "shm").string();
  auto job = [&](int ranks) {
    auto command = load_command(dir);
    command.insert(command.end(), {"--map-files", "never", "--keep", "10m"});
    return testing::run_command(
        concat({"/usr/bin/env", env, SHARDCAST_RUN_PATH, "--standalone", "-n", std::to_string(ranks)}, command),
        std::chrono::seconds(180));
  };
  auto r = job(2);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const testing::LoadJob first = testing::expect_bit_exact_job(dir.path(), 2, dir / "ckpt");
  const std::string key = first.reports[0]["kept"]["key"];
  EXPECT_EQ(first.reports[1]["kept"]["state"], "kept");

  r = job(3);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  testing::expect_reused_kept_copy(testing::expect_bit_exact_job(dir.path(), 3, dir / "ckpt"), key);

  // Let it expire (its manifest says when), then start any job.
  const fs::path manifest = shm::KeptStore(shm::Location{dir / "shm"}).dir() / key / "manifest.json";
  auto m = nlohmann::json::parse(testing::read_file(manifest));
  m["expires_unix"] = 1;
  std::ofstream(manifest) << m.dump();
  r = testing::run_command({"/usr/bin/env", env, SHARDCAST_RUN_PATH, "--standalone", "-n", "1", "/bin/true"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("shardcast-run: removed kept copy " + key), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_empty(dir / "shm"));
}

}  // namespace
}  // namespace shardcast
