// Placement cuda with host memory standing in for the GPUs: the ring protocol, every transport, tensor-parallel
// slices, dtype casts on the device, failures that reach every rank, nothing left in /dev/shm. The same code path
// runs on a GPU with the CUDA Device (tests/gpu/run.sh).
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>

#include <fmt/format.h>

#include "coordinator/catalog.h"
#include "coordinator/convert.h"
#include "coordinator/synth.h"
#include "coordinator/torch_dtype.h"
#include "launch/communicator.h"
#include "tests/support/forked_sessions.h"
#include "tests/support/temp_dir.h"
#include "worker/session.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using namespace testing::forked;

constexpr uint64_t kCheckpointBytes = 3'000'000;
// The bit-exact tests use every dtype this LibTorch holds: all of safetensors' on 2.3+ (F8, U16/U32/U64 included),
// the .bin subset on Debian's 1.13.
constexpr bool kTorchDtypesOnly = !(SHARDCAST_TORCH_HAS_FLOAT8 && SHARDCAST_TORCH_HAS_UINT);

// SHARDCAST_TEST_DEVICE=cuda (tests/gpu/run.sh) runs these tests on cuda:0 instead of the host stand-in.
bool on_real_gpu() {
  const char* device = std::getenv("SHARDCAST_TEST_DEVICE");
  return device && std::string(device) == "cuda";
}

// NCCL refuses two ranks on one GPU: multi-rank collectives run on the stand-in, or on a machine with a GPU per rank.
#define SKIP_COLLECTIVES_ON_ONE_GPU(transport, ranks)       \
  if (on_real_gpu() && (transport) != "h2d" && (ranks) > 1) \
  GTEST_SKIP() << "NCCL needs one GPU per rank; " << (ranks) << " ranks share cuda:0 here"

LoadOptions on_stand_in(const std::string& transport, uint64_t slot_bytes = 64 << 10) {
  LoadOptions options;
  options.placement = Placement::kCuda;
  options.gpu.host_stand_in = !on_real_gpu();
  options.gpu.device = 0;
  options.gpu.transport = transport;
  options.gpu.ring_slot_bytes = slot_bytes;
  options.timeout = std::chrono::seconds(60);
  return options;
}

std::string stat_line(const LoadStats& s) {
  std::string transports;
  for (const auto& [how, count] : s.transports) transports += how + "=" + std::to_string(count) + ",";
  return fmt::format("read={} ring={} to_device={} received={} transports={} choice={}", s.rank_bytes_read,
                     s.ring_bytes, s.rank_bytes_to_device, s.rank_bytes_received, transports, s.transport_choice);
}

uint64_t field(const std::string& line, const std::string& key) {
  const size_t at = line.find(key + "=");
  return std::stoull(line.substr(at + key.size() + 1));
}

TEST(DeviceLoad, H2DThroughASmallRingIsBitExactOnEveryRankAndHoldsOnlyTheRing) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 900'000, CheckpointFormat::kSafetensors, kTorchDtypesOnly);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    StateDict state = session.load(dir / "ckpt", on_stand_in("auto"));
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state);
    std::ofstream(dir / ("stats" + std::to_string(rank))) << stat_line(session.last_stats());
  });
  expect_all_succeeded(outcomes);
  uint64_t read = 0;
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
    const std::string stats = testing::read_file(dir / ("stats" + std::to_string(r)));
    EXPECT_EQ(field(stats, "ring"), 2u * (64 << 10)) << stats;
    EXPECT_EQ(field(stats, "to_device"), kCheckpointBytes) << stats;
    EXPECT_CONTAINS(stats, "auto chose h2d");
    EXPECT_CONTAINS(stats, "transports=empty=1,h2d=");  // the synth layout's one empty tensor moves no bytes
    read += field(stats, "read");
  }
  EXPECT_GE(read, kCheckpointBytes);
  EXPECT_LT(read, kCheckpointBytes * 11 / 10) << "the node's ranks share each chunk's reads";
  EXPECT_TRUE(shardcast_segments().empty());
}

struct TransportCase {
  std::string transport;
  bool job_reads_once;  // true: only node 0 reads; false: every node reads
};

class DeviceTransports : public ::testing::TestWithParam<TransportCase> {};

TEST_P(DeviceTransports, TwoVirtualNodesGetTheCheckpointBitExact) {
  const TransportCase c = GetParam();
  SKIP_COLLECTIVES_ON_ONE_GPU(c.transport, 4);
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 700'000, CheckpointFormat::kSafetensors, kTorchDtypesOnly);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(
      dir, 4,
      [&](Session& session, int rank) {
        StateDict state = session.load(dir / "ckpt", on_stand_in(c.transport, 100'000));
        std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state);
        std::ofstream(dir / ("stats" + std::to_string(rank))) << stat_line(session.last_stats());
      },
      std::chrono::seconds(120), /*ranks_per_node=*/2);
  expect_all_succeeded(outcomes);
  uint64_t read = 0;
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
    const std::string stats = testing::read_file(dir / ("stats" + std::to_string(r)));
    read += field(stats, "read");
    if (c.job_reads_once) {
      EXPECT_EQ(field(stats, "ring"), r < 2 ? 200'000u : 0u) << "only node 0 holds a ring: " << stats;
      if (r >= 2) {
        EXPECT_EQ(field(stats, "read"), 0u) << "node 1 reads nothing: " << stats;
      }
      EXPECT_EQ(field(stats, "to_device"), r == 0 ? kCheckpointBytes : 0u) << stats;
      EXPECT_EQ(field(stats, "received"), r == 0 ? 0u : kCheckpointBytes) << stats;
    } else {
      EXPECT_EQ(field(stats, "ring"), 200'000u) << stats;
      EXPECT_EQ(field(stats, "to_device"), kCheckpointBytes) << stats;
    }
  }
  const uint64_t copies = c.job_reads_once ? 1 : 2;
  EXPECT_GE(read, copies * kCheckpointBytes);
  EXPECT_LT(read, copies * kCheckpointBytes * 11 / 10);
  EXPECT_TRUE(shardcast_segments().empty());
}

INSTANTIATE_TEST_SUITE_P(Transports, DeviceTransports,
                         ::testing::Values(TransportCase{"h2d", false}, TransportCase{"nccl", true},
                                           TransportCase{"scatter", true}, TransportCase{"auto", true}),
                         [](const auto& info) { return info.param.transport; });

class DeviceTensorParallel : public ::testing::TestWithParam<std::string> {};

// Tensor-parallel size 2 over 4 ranks (2 virtual nodes): rank r holds torch.tensor_split(t, 2, dim)[r % 2], and under
// scatter each rank's GPU receives only its slices.
TEST_P(DeviceTensorParallel, EachRankHoldsExactlyItsSlice) {
  const std::string transport = GetParam();
  SKIP_COLLECTIVES_ON_ONE_GPU(transport, 4);
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 700'000, CheckpointFormat::kSafetensors, kTorchDtypesOnly);
  auto outcomes = with_sessions(
      dir, 4,
      [&](Session& session, int rank) {
        LoadOptions options = on_stand_in(transport, 100'000);
        options.tensors = {"model.layers.*"};
        options.tp.size = 2;
        options.tp.rules = {parse_slice_rule("*.o_proj.weight:1"), parse_slice_rule("*.down_proj.weight:1"),
                            parse_slice_rule("model.layers.*:0")};
        StateDict sliced = session.load(dir / "ckpt", options);
        std::ofstream(dir / ("stats" + std::to_string(rank))) << stat_line(session.last_stats());
        LoadOptions whole;
        whole.tensors = options.tensors;
        StateDict full = session.load(dir / "ckpt", whole);
        // The CPU placements slice the same way, as views.
        LoadOptions views = whole;
        views.tp = options.tp;
        StateDict viewed = session.load(dir / "ckpt", views);
        if (sliced.size() != full.size()) throw std::runtime_error("wrong tensor count");
        for (const auto& item : full) {
          const std::string& name = item.key();
          const int dim =
              name.find("o_proj.weight") != std::string::npos || name.find("down_proj.weight") != std::string::npos ? 1
                                                                                                                    : 0;
          at::Tensor expected = at::tensor_split(item.value(), 2, dim)[rank % 2].contiguous();
          for (const at::Tensor& got : {sliced[name], viewed[name]}) {
            if (!got.sizes().equals(expected.sizes()) ||
                std::memcmp(got.contiguous().data_ptr(), expected.data_ptr(), expected.nbytes()) != 0) {
              throw std::runtime_error("rank " + std::to_string(rank) + " holds the wrong slice of " + name);
            }
          }
        }
      },
      std::chrono::seconds(120), /*ranks_per_node=*/2);
  expect_all_succeeded(outcomes);
  if (transport == "scatter") {
    for (int r = 1; r < 4; ++r) {
      const std::string stats = testing::read_file(dir / ("stats" + std::to_string(r)));
      EXPECT_CONTAINS(stats, "transports=scatter=");
      EXPECT_LT(field(stats, "received"), kCheckpointBytes / 2) << "a rank received more than its half: " << stats;
    }
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

INSTANTIATE_TEST_SUITE_P(Transports, DeviceTensorParallel, ::testing::Values("h2d", "scatter", "nccl"),
                         [](const auto& info) { return info.param; });

class DeviceDtype : public ::testing::TestWithParam<std::string> {};

// Bytes cross in the checkpoint's dtype and are cast on the device: the same values as the host conversion.
TEST_P(DeviceDtype, CastOnTheDeviceEqualsTheHostConversion) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 900'000, CheckpointFormat::kSafetensors, kTorchDtypesOnly);
  ConvertOptions convert;
  convert.dtype = dtype_from_user_name(GetParam());
  convert_checkpoint(dir / "ckpt", dir / "converted", convert);
  const std::string expected = expected_digest(dir / "converted");
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    LoadOptions options = on_stand_in("h2d");
    options.dtype = GetParam();
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(session.load(dir / "ckpt", options));
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DeviceDtype, ::testing::Values("f32", "bf16", "f16"));

TEST(DeviceLoad, BinCheckpointsStageOneShardAtATime) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 900'000, CheckpointFormat::kTorchBin, true);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    std::ofstream(dir / ("digest" + std::to_string(rank)))
        << digest_of(session.load(dir / "ckpt", on_stand_in("auto")));
    std::ofstream(dir / ("stats" + std::to_string(rank))) << stat_line(session.last_stats());
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected);
    EXPECT_CONTAINS(testing::read_file(dir / ("stats" + std::to_string(r))), "staged one shard at a time");
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceLoad, OneRankRunsTheNcclPathsToo) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 900'000, CheckpointFormat::kSafetensors, kTorchDtypesOnly);
  Session session(make_self_communicator());
  for (const char* transport : {"nccl", "scatter"}) {
    EXPECT_EQ(digest_of(session.load(dir / "ckpt", on_stand_in(transport))), expected_digest(dir / "ckpt"))
        << transport;
    EXPECT_EQ(session.last_stats().rank_bytes_to_device, kCheckpointBytes);
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceLoad, ARankWithoutAGpuFailsEveryRankNamingIt) {
  if (on_real_gpu()) GTEST_SKIP() << "needs a machine without a GPU";
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options = on_stand_in("h2d");
    options.gpu.host_stand_in = rank != 1;  // rank 1 asks for a real GPU, which this machine may not have
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  expect_all_succeeded(outcomes);
  if (outcome_file(dir, 1) == "ok") GTEST_SKIP() << "this machine has a usable GPU";
  EXPECT_CONTAINS(outcome_file(dir, 1), std::to_string(static_cast<int>(ErrorCode::kInvalidArgument)));
  for (int r : {0, 2}) {
    EXPECT_CONTAINS(outcome_file(dir, r), "rank 1 (local rank 1 of node 0) failed in 'find device'");
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

// On the GPU machine too: a device index the host lacks fails before any transfer, naming it, and leaves nothing.
TEST(DeviceLoad, ADeviceIndexThisHostLacksIsAClearError) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  Session session(make_self_communicator());
  LoadOptions options = on_stand_in("h2d");
  options.gpu.host_stand_in = false;
  options.gpu.device = 97;
  try {
    session.load(dir / "ckpt", options);
    ADD_FAILURE() << "cuda:97 loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(std::regex_search(e.what(), std::regex("no cuda:97 on this host|needs a build with CUDA|"
                                                       "the LibTorch this shardcast links has no CUDA")))
        << e.what();
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceLoad, ARankKilledMidStreamStopsTheOthersInSecondsNamingIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", kCheckpointBytes, 0, CheckpointFormat::kSafetensors, true);
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options = on_stand_in("h2d");
    options.timeout = std::chrono::seconds(60);
    options.progress = [rank](const std::string& step, size_t chunk, size_t) {
      if (rank == 1 && step == "stream" && chunk == 3) raise(SIGKILL);
    };
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20)) << "the survivors waited it out";
  EXPECT_TRUE(outcomes[1].signaled && outcomes[1].signal == SIGKILL) << outcomes[1].describe();
  for (int r : {0, 2}) {
    EXPECT_EQ(outcomes[r].describe(), "exit 0");
    EXPECT_CONTAINS(outcome_file(dir, r), std::to_string(static_cast<int>(ErrorCode::kRemoteRankFailed)));
    EXPECT_CONTAINS(outcome_file(dir, r), "stream chunk 4/");
    EXPECT_CONTAINS(outcome_file(dir, r), "local rank 1 (rank 1, pid");
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceLoad, BadRingAndSliceOptionsAreClearErrors) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  Session session(make_self_communicator());
  auto error_of = [&](const LoadOptions& options) -> std::string {
    try {
      session.load(dir / "ckpt", options);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  LoadOptions one_slot = on_stand_in("h2d");
  one_slot.gpu.ring_slots = 1;
  EXPECT_CONTAINS(error_of(one_slot), "the ring needs at least 2 buffers");
  LoadOptions bad_dim = on_stand_in("h2d");
  bad_dim.tensors = {"model.norm.weight"};
  bad_dim.tp.rules = {parse_slice_rule("model.norm.weight:1")};
  EXPECT_EQ(error_of(bad_dim), "no error") << "a group of one slices nothing";
  LoadOptions bad_transport = on_stand_in("carrier-pigeon");
  EXPECT_CONTAINS(error_of(bad_transport), "transport 'carrier-pigeon' is not one of auto, h2d, nccl, scatter");
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceLoad, ASliceRuleOutsideATensorsShapeNamesIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kSafetensors, true);
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    LoadOptions options = on_stand_in("h2d");
    options.tp.size = 2;
    options.tp.rules = {parse_slice_rule("model.norm.weight:1")};
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  expect_all_succeeded(outcomes);
  for (int r : {0, 1}) EXPECT_CONTAINS(outcome_file(dir, r), "tensor 'model.norm.weight' of shape [");
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceLoad, LoadIntoMakesParametersTheDeviceTensors) {
  TempDir dir;
  torch::nn::Linear linear(torch::nn::LinearOptions(6, 4));
  StateDict state;
  for (const auto& item : linear->named_parameters()) state.insert(item.key(), item.value().detach().clone());
  save_sharded(state, dir / "ckpt");
  torch::nn::Linear fresh(torch::nn::LinearOptions(6, 4));
  Session session(make_self_communicator());
  LoadReport report = session.load_into(*fresh, dir / "ckpt", on_stand_in("h2d"));
  EXPECT_EQ(report.loaded, 2u);
  EXPECT_TRUE(torch::equal(fresh->weight, linear->weight));
  EXPECT_TRUE(torch::equal(fresh->bias, linear->bias));
  EXPECT_TRUE(shardcast_segments().empty());
}

}  // namespace
}  // namespace shardcast
