// device_map loads across forked ranks: every tensor bit-exact and where the map says (cpu in the node's segments,
// disk in a mapping of the checkpoint or offload file, cuda through the host stand-in), the map agreed by every rank,
// offload folders written once per node and removed; and dtype "auto" / keep_in_fp32 as transformers reads them.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

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

std::string map_text(const DeviceMap& map) {
  std::string text;
  for (const auto& [prefix, device] : map) text += prefix + "=" + device + ",";
  return text;
}

TEST(DeviceMapLoad, AMixedMapOnFourRanksIsBitExactAndEachTensorIsWhereTheMapSays) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 900'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(dir, 4, [&](Session& session, int rank) {
    LoadOptions options;
    options.device_map = {{"model.layers.0", "cuda"}, {"model.layers.1", "disk"}, {"", "cpu"}};
    options.map_files = MapFiles::kNever;  // cpu in segments, so that only disk tensors lie in the checkpoint files
    options.gpu.host_stand_in = true;
    options.gpu.ring_slot_bytes = 64 << 10;
    StateDict state = session.load(dir / "ckpt", options);
    std::string where;
    for (const auto& item : state) {
      const std::string& name = item.key();
      const std::string file = mapped_file(item.value().data_ptr());
      const bool on_disk = name.rfind("model.layers.1.", 0) == 0;
      if (item.value().numel() == 0) continue;
      if (on_disk != (file.find("/ckpt/model-") != std::string::npos)) where += name + " is in '" + file + "'\n";
    }
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state) << where;
    std::ofstream(dir / ("map" + std::to_string(rank))) << map_text(session.last_stats().device_map);
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
    EXPECT_EQ(testing::read_file(dir / ("map" + std::to_string(r))), "model.layers.0=cuda,model.layers.1=disk,=cpu,");
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(DeviceMapLoad, BinTensorsOnDiskAreWrittenOncePerNodeToTheOffloadFolderThenRemoved) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 700'000, CheckpointFormat::kTorchBin, true);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options;
    options.device_map = {{"", "disk"}};
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });  // no offload_folder: refused on every rank
    options.offload_folder = dir / "offload";
    StateDict state = session.load(dir / "ckpt", options);
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state);
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
    EXPECT_CONTAINS(outcome_file(dir, r), "give an offload_folder");
  }
  EXPECT_TRUE(fs::is_empty(dir / "offload")) << "the offload folder was left behind";
}

TEST(DeviceMapLoad, AutoIsPlannedOnceAndEveryRankLoadsTheSameMap) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 900'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = expected_digest(dir / "ckpt");
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    LoadOptions options;
    options.device_map_strategy = "sequential";
    options.max_memory = {{"cpu", 1'000'000}};  // a third of the model in RAM, the rest on disk
    const DevicePlan plan = session.plan(dir / "ckpt", options);
    StateDict state = session.load(dir / "ckpt", options);
    if (map_text(plan.device_map) != map_text(session.last_stats().device_map))
      throw std::runtime_error("plan != load");
    std::ofstream(dir / ("digest" + std::to_string(rank))) << digest_of(state);
    std::ofstream(dir / ("map" + std::to_string(rank))) << map_text(plan.device_map);
    for (const auto& [device, bytes] : plan.device_bytes) {
      if (device == "cpu" && bytes > 1'000'000) throw std::runtime_error("cpu over its budget");
    }
  });
  expect_all_succeeded(outcomes);
  const std::string map0 = testing::read_file(dir / "map0");
  EXPECT_CONTAINS(map0, "=cpu");
  EXPECT_CONTAINS(map0, "=disk");
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digest" + std::to_string(r))), expected) << "rank " << r;
    EXPECT_EQ(testing::read_file(dir / ("map" + std::to_string(r))), map0) << "rank " << r;
  }
}

TEST(DeviceMapLoad, ATensorNoKeyCoversFailsEveryRankNamingIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'500'000, 900'000, CheckpointFormat::kSafetensors, true);
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    LoadOptions options;
    options.device_map = {{"model", "cpu"}};
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 2; ++r) EXPECT_CONTAINS(outcome_file(dir, r), "tensor 'lm_head.weight' is on no device");
  EXPECT_TRUE(shardcast_segments().empty());
}

std::map<std::string, c10::ScalarType> dtypes_of(const StateDict& state) {
  std::map<std::string, c10::ScalarType> out;
  for (const auto& item : state) out[item.key()] = item.value().scalar_type();
  return out;
}

TEST(DtypeAuto, FollowsConfigJsonElseTheFirstFloatingTensorAndKeepInFp32Wins) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'500'000, 0, CheckpointFormat::kSafetensors, true);
  Session session(make_self_communicator());
  const Catalog catalog = open_catalog(dir / "ckpt");
  LoadOptions options;
  options.dtype = "keep";
  const auto kept = dtypes_of(session.load(dir / "ckpt", options));

  // No config.json: the first floating tensor by name in the first shard.
  options.dtype = "auto";
  const auto first = *auto_dtype(catalog);
  for (const auto& [name, type] : dtypes_of(session.load(dir / "ckpt", options))) {
    const bool floating = at::isFloatingType(kept.at(name));  // torch dtypes only: no F8
    EXPECT_EQ(type, floating ? *to_scalar_type(first) : kept.at(name)) << name;
  }

  std::ofstream(dir / "ckpt" / "config.json") << R"({"architectures": ["LlamaForCausalLM"], "torch_dtype": "float32"})";
  options.keep_in_fp32 = {};
  for (const auto& [name, type] : dtypes_of(session.load(dir / "ckpt", options))) {
    EXPECT_EQ(type, at::isFloatingType(kept.at(name)) ? c10::kFloat : kept.at(name)) << name;
  }

  options.dtype = "bf16";
  options.keep_in_fp32 = {"input_layernorm"};
  for (const auto& [name, type] : dtypes_of(session.load(dir / "ckpt", options))) {
    if (!at::isFloatingType(kept.at(name))) continue;
    const bool kept_fp32 = name.find(".input_layernorm.") != std::string::npos;
    EXPECT_EQ(type, kept_fp32 ? c10::kFloat : c10::kBFloat16) << name;
  }

  std::ofstream(dir / "ckpt" / "config.json") << R"({"torch_dtype": "int8"})";
  options.dtype = "auto";
  try {
    session.load(dir / "ckpt", options);
    FAIL() << "an int8 torch_dtype was taken";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_CONTAINS(e.what(), "config.json");
    EXPECT_CONTAINS(e.what(), "'int8'");
  }
}

}  // namespace
}  // namespace shardcast
