// Multi-rank loads with forked ranks meeting in a file store: bit-exact digests on every rank for every placement
// and format, dtype conversion once per node, failures that reach every rank, nothing left in /dev/shm.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <fstream>

#include "coordinator/catalog.h"
#include "coordinator/convert.h"
#include "coordinator/digest.h"
#include "coordinator/synth.h"
#include "coordinator/torch_dtype.h"
#include "launch/communicator.h"
#include "tests/support/forked_sessions.h"
#include "tests/support/multiproc.h"
#include "tests/support/temp_dir.h"
#include "worker/session.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using namespace testing::forked;

struct Case {
  int ranks;
  Placement placement;
  CheckpointFormat format;
  std::string dtype;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.ranks << " ranks, " << placement_name(c.placement) << ", " << format_name(c.format) << ", dtype " << c.dtype;
}

class ForkedLoad : public ::testing::TestWithParam<Case> {};

TEST_P(ForkedLoad, EveryRankHoldsTheCheckpointBitExact) {
  const Case c = GetParam();
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 900'000, c.format, /*torch_dtypes_only=*/true);
  fs::path reference = dir / "ckpt";
  if (c.dtype != "keep") {
    ConvertOptions convert;
    convert.dtype = dtype_from_user_name(c.dtype);
    convert_checkpoint(dir / "ckpt", dir / "converted", convert);
    reference = dir / "converted";
  }
  const std::string expected = expected_digest(reference);
  auto outcomes = with_sessions(dir, c.ranks, [&](Session& session, int rank) {
    LoadOptions options;
    options.placement = c.placement;
    options.dtype = c.dtype;
    StateDict state = session.load(dir / "ckpt", options);
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state);
    if (session.topology().local_size != c.ranks) throw std::runtime_error("ranks did not form one node");
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < c.ranks; ++r)
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
  EXPECT_TRUE(shardcast_segments().empty());
}

INSTANTIATE_TEST_SUITE_P(RanksPlacementsFormats, ForkedLoad,
                         ::testing::Values(Case{1, Placement::kShared, CheckpointFormat::kSafetensors, "keep"},
                                           Case{2, Placement::kShared, CheckpointFormat::kSafetensors, "keep"},
                                           Case{4, Placement::kShared, CheckpointFormat::kSafetensors, "keep"},
                                           Case{3, Placement::kCopyOnWrite, CheckpointFormat::kSafetensors, "keep"},
                                           Case{3, Placement::kPrivate, CheckpointFormat::kSafetensors, "keep"},
                                           Case{2, Placement::kShared, CheckpointFormat::kTorchBin, "keep"},
                                           Case{2, Placement::kPrivate, CheckpointFormat::kTorchBin, "keep"},
                                           Case{2, Placement::kShared, CheckpointFormat::kSafetensors, "f32"},
                                           Case{2, Placement::kPrivate, CheckpointFormat::kTorchBin, "bf16"}),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return std::to_string(c.ranks) + "Ranks_" + std::string(placement_name(c.placement)) + "_" +
                                  std::string(format_name(c.format)) + "_" + c.dtype;
                         });

// Each node maps the runs it read from the checkpoint files (map_files auto) and receives the others into segments.
TEST(NodeLoad, VirtualNodesMapWhatTheyReadAndExchangeTheRestThroughTheStore) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 700'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(
      dir, 4,
      [&](Session& session, int rank) {
        StateDict state = session.load(dir / "ckpt");
        if (session.topology().node_count != 2 || session.topology().node != rank / 2) {
          throw std::runtime_error("wrong virtual topology: " + session.topology().describe());
        }
        size_t mapped = 0, received = 0;
        for (const auto& [name, source] : session.last_stats().tensor_sources) {
          mapped += source == TensorSource::kMapped;
          received += source == TensorSource::kReceived;
          const bool in_file = mapped_file(state[name].data_ptr()).find("/ckpt/model-") != std::string::npos;
          if (state[name].numel() > 0 && in_file != (source == TensorSource::kMapped)) {
            throw std::runtime_error(name + " is not where its source says");
          }
        }
        if (mapped == 0 || received == 0) throw std::runtime_error("each node maps what it read, receives the rest");
        std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state);
        std::ofstream(dir / ("read" + std::to_string(rank))) << session.last_stats().rank_bytes_read;
      },
      std::chrono::seconds(120), /*ranks_per_node=*/2);
  expect_all_succeeded(outcomes);
  uint64_t read = 0;
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
    read += std::stoull(testing::read_file(dir / ("read" + std::to_string(r))));
  }
  EXPECT_LT(read, 3'300'000u) << "the job read some shard more than once";
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(NodeLoad, CopyOnWriteWritesStayInTheWritingRank) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options;
    options.placement = Placement::kCopyOnWrite;
    StateDict state = session.load(dir / "ckpt", options);
    at::Tensor w = state["model.norm.weight"];
    const float original = w[0].item<float>();
    if (rank == 1) w.fill_(42.0f);
    // Everyone checks after rank 1 wrote: only rank 1 sees 42.
    auto gather = make_file_store_communicator(dir / "store2", rank, 3);
    gather->barrier("written", std::chrono::seconds(30));
    const float seen = w[0].item<float>();
    if (rank == 1 ? seen != 42.0f : seen != original)
      throw std::runtime_error("rank " + std::to_string(rank) + " sees " + std::to_string(seen));
  });
  expect_all_succeeded(outcomes);
}

TEST(NodeLoad, ARankThatFailsMidLoadFailsEveryRankCleanly) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 0, CheckpointFormat::kSafetensors, true);
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options;
    options.timeout = std::chrono::seconds(20);
    options.progress = [rank](const std::string& step, size_t, size_t) {
      if (rank == 2 && step == "stage") throw Error(ErrorCode::kSystem, "injected failure while staging");
    };
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  expect_all_succeeded(outcomes);
  EXPECT_EQ(outcome_file(dir, 2),
            std::to_string(static_cast<int>(ErrorCode::kSystem)) + " injected failure while staging");
  for (int r : {0, 1}) {
    EXPECT_CONTAINS(outcome_file(dir, r), std::to_string(static_cast<int>(ErrorCode::kRemoteRankFailed)) +
                                              " rank 2 (local rank 2 of node 0) failed in 'stage': injected failure");
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

// The leader hands out a batch's segments before the job agrees that every rank created it; when a rank fails there,
// the others never take them. The next load on the same sessions must get its own segments, not those unfilled ones.
TEST(NodeLoad, ALoadAfterOneThatFailedAtCreateGetsItsOwnSegments) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 0, CheckpointFormat::kSafetensors, true);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions failing;
    failing.progress = [rank](const std::string& step, size_t, size_t) {
      if (rank == 1 && step == "create") throw Error(ErrorCode::kSystem, "injected failure at create");
    };
    EXPECT_THROW(session.load(dir / "ckpt", failing), Error);
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(session.load(dir / "ckpt", LoadOptions{}));
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
  }
}

// A rank that dies mid-load is seen by the others through the node link: they stop in seconds, not at the timeout,
// naming it; and since segments never had names, nothing is left anywhere.
TEST(NodeLoad, ARankKilledDuringStagingStopsTheOthersInSecondsNamingIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 0, CheckpointFormat::kSafetensors, true);
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options;
    options.timeout = std::chrono::seconds(60);
    options.progress = [rank](const std::string& step, size_t, size_t) {
      if (rank == 1 && step == "stage") raise(SIGKILL);
    };
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20)) << "the survivors waited it out";
  EXPECT_TRUE(outcomes[1].signaled && outcomes[1].signal == SIGKILL) << outcomes[1].describe();
  for (int r : {0, 2}) {
    EXPECT_EQ(outcomes[r].describe(), "exit 0");
    EXPECT_CONTAINS(outcome_file(dir, r), std::to_string(static_cast<int>(ErrorCode::kRemoteRankFailed)));
    EXPECT_CONTAINS(outcome_file(dir, r), "local rank 1 (rank 1, pid");
    EXPECT_CONTAINS(outcome_file(dir, r), "died");
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(NodeLoad, ALeaderKilledAtAttachLeavesNothingAndTheOthersStopAtOnce) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 0, CheckpointFormat::kSafetensors, true);
  const shm::Location segments{dir / "segments"};
  fs::create_directories(segments.dir);
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    LoadOptions options;
    options.timeout = std::chrono::seconds(60);
    options.shm_dir = segments.dir;
    options.progress = [rank](const std::string& step, size_t, size_t) {
      if (rank == 0 && step == "attach") raise(SIGKILL);
    };
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20)) << "rank 1 waited it out";
  EXPECT_TRUE(outcomes[0].signaled) << outcomes[0].describe();
  EXPECT_CONTAINS(outcome_file(dir, 1), "the node leader, local rank 0 (rank 0, pid");
  EXPECT_TRUE(fs::is_empty(segments.dir)) << "a segment never has a name, so a dead leader leaks nothing";
}

TEST(NodeLoad, TooLittleSharedMemoryFailsBeforeAllocatingWithTheFix) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 0, CheckpointFormat::kSafetensors, true);
  fs::create_directories(dir / "tiny");
  if (mount("tmpfs", (dir / "tiny").c_str(), "tmpfs", 0, "size=1m") != 0) {
    GTEST_SKIP() << "cannot mount a 1 MB tmpfs here (needs root): " << std::strerror(errno);
  }
  Session session(make_self_communicator());
  LoadOptions options;
  options.shm_dir = dir / "tiny";
  // Mapped from the page cache (the default), the load needs no shared memory at all: Docker's 64 MB /dev/shm case.
  EXPECT_EQ(session.load(dir / "ckpt", options).size(), open_catalog(dir / "ckpt").tensors.size());
  EXPECT_EQ(session.last_stats().node_bytes_staged, 0u);
  options.map_files = MapFiles::kNever;
  try {
    session.load(dir / "ckpt", options);
    ADD_FAILURE() << "loaded 3 MB into a 1 MB tmpfs";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSystem);
    EXPECT_CONTAINS(e.what(), "not enough shared memory");
    EXPECT_CONTAINS(e.what(), "has 1.05 MB");
    EXPECT_CONTAINS(e.what(), "--shm-size");
  }
  EXPECT_TRUE(fs::is_empty(dir / "tiny"));
  umount((dir / "tiny").c_str());
}

TEST(NodeLoad, FileBackedSegmentsLoadTheSameBytes) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  Session session(make_self_communicator());
  LoadOptions options;
  options.shm_dir = dir / "segments";
  fs::create_directories(options.shm_dir);
  EXPECT_EQ(digest_of(session.load(dir / "ckpt", options)), expected_digest(dir / "ckpt"));
  EXPECT_TRUE(fs::is_empty(options.shm_dir));
}

TEST(NodeLoad, TensorFilterLoadsOnlyWhatWasAskedAndRejectsUnknownNames) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  Session session(make_self_communicator());
  LoadOptions options;
  options.tensors = {"model.layers.0.*", "lm_head.weight"};
  StateDict state = session.load(dir / "ckpt", options);
  EXPECT_EQ(state.size(), 11u);  // 10 per layer + lm_head
  EXPECT_TRUE(state.contains("lm_head.weight"));
  options.tensors = {"no.such.tensor"};
  EXPECT_THROW(session.load(dir / "ckpt", options), Error);
}

}  // namespace
}  // namespace shardcast
