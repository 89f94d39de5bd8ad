// device_map: prefix resolution, and the "auto" planner against maps computed by hand (accelerate's
// infer_auto_device_map rules: split what does not fit unless it is kept whole, then the next device).
#include <gtest/gtest.h>

#include "coordinator/device_map.h"
#include "coordinator/plan.h"

namespace shardcast {
namespace {

using Bytes = std::vector<std::pair<std::string, uint64_t>>;

// A two-layer decoder: embed 100, layers of 100 (attn 40 + mlp 60), norm 10, lm_head tied to the embedding.
ModelLayout decoder(bool layers_whole = true) {
  ModelLayout layout;
  layout.tensors = {{"model.embed_tokens.weight", 100, ""},
                    {"model.layers.0.attn.w", 40, ""},
                    {"model.layers.0.mlp.w", 60, ""},
                    {"model.layers.1.attn.w", 40, ""},
                    {"model.layers.1.mlp.w", 60, ""},
                    {"model.norm.weight", 10, ""},
                    {"lm_head.weight", 100, "model.embed_tokens.weight"}};
  if (layers_whole) layout.no_split = {"model.layers.0", "model.layers.1"};
  return layout;
}

std::vector<DeviceBudget> budgets(std::vector<std::pair<std::string, uint64_t>> given) {
  std::vector<DeviceBudget> out;
  for (auto& [device, bytes] : given) out.push_back({device, bytes, 1});
  return out;
}

TEST(DeviceMap, EverythingThatFitsOneDeviceIsOneEntry) {
  const auto planned = plan_device_map(decoder(), budgets({{"cuda", 310}, {"cpu", 1000}}), MapStrategy::kSequential);
  EXPECT_EQ(planned.map, (DeviceMap{{"", "cuda"}}));
  EXPECT_EQ(planned.bytes, (Bytes{{"cuda", 310}}));  // the tied head counts once
}

TEST(DeviceMap, BudgetJustFittingTakesTheLayer) {
  const auto planned = plan_device_map(decoder(), budgets({{"cuda", 200}, {"cpu", 1000}}), MapStrategy::kSequential);
  EXPECT_EQ(planned.map, (DeviceMap{{"model.embed_tokens", "cuda"},
                                    {"model.layers.0", "cuda"},
                                    {"model.layers.1", "cpu"},
                                    {"model.norm", "cpu"},
                                    {"lm_head", "cuda"}}));  // tied to the embedding, so where it went
  EXPECT_EQ(planned.bytes, (Bytes{{"cuda", 200}, {"cpu", 110}}));
}

TEST(DeviceMap, BudgetJustFailingMovesTheLayerOn) {
  const auto planned = plan_device_map(decoder(), budgets({{"cuda", 199}, {"cpu", 1000}}), MapStrategy::kSequential);
  EXPECT_EQ(
      planned.map,
      (DeviceMap{{"model.embed_tokens", "cuda"}, {"model.layers", "cpu"}, {"model.norm", "cpu"}, {"lm_head", "cuda"}}));
  EXPECT_EQ(planned.bytes, (Bytes{{"cuda", 100}, {"cpu", 210}}));
}

TEST(DeviceMap, NoSplitModulesStayWholeOthersSplitIntoTheirChildren) {
  const auto whole = plan_device_map(decoder(true), budgets({{"cuda", 250}, {"cpu", 1000}}), MapStrategy::kSequential);
  EXPECT_EQ(whole.map, (DeviceMap{{"model.embed_tokens", "cuda"},
                                  {"model.layers.0", "cuda"},
                                  {"model.layers.1", "cpu"},
                                  {"model.norm", "cpu"},
                                  {"lm_head", "cuda"}}));
  // Without no_split, layer 1 splits: its attention (40) still fits the 50 left, its MLP (60, a leaf module) not.
  const auto split = plan_device_map(decoder(false), budgets({{"cuda", 250}, {"cpu", 1000}}), MapStrategy::kSequential);
  EXPECT_EQ(split.map, (DeviceMap{{"model.embed_tokens", "cuda"},
                                  {"model.layers.0", "cuda"},
                                  {"model.layers.1.attn", "cuda"},
                                  {"model.layers.1.mlp", "cpu"},
                                  {"model.norm", "cpu"},
                                  {"lm_head", "cuda"}}));
  EXPECT_EQ(split.bytes, (Bytes{{"cuda", 240}, {"cpu", 70}}));
}

TEST(DeviceMap, BalancedSpreadsOverTwoGpusSequentialFillsTheFirst) {
  const auto b = budgets({{"cuda:0", 1000}, {"cuda:1", 1000}, {"cpu", 1000}});
  // An even share is 155: the embedding (100) fits cuda:0, layer 0 (100) would pass the share, so cuda:1 takes the
  // rest.
  EXPECT_EQ(plan_device_map(decoder(), b, MapStrategy::kBalanced).map, (DeviceMap{{"model.embed_tokens", "cuda:0"},
                                                                                  {"model.layers", "cuda:1"},
                                                                                  {"model.norm", "cuda:1"},
                                                                                  {"lm_head", "cuda:0"}}));
  EXPECT_EQ(plan_device_map(decoder(), b, MapStrategy::kSequential).map, (DeviceMap{{"", "cuda:0"}}));
}

TEST(DeviceMap, DiskTakesWhatTheOthersCannot) {
  const auto planned = plan_device_map(decoder(), budgets({{"cuda", 100}, {"cpu", 150}, {"disk", UINT64_MAX}}),
                                       MapStrategy::kSequential);
  EXPECT_EQ(planned.map, (DeviceMap{{"model.embed_tokens", "cuda"},
                                    {"model.layers.0", "cpu"},
                                    {"model.layers.1", "disk"},
                                    {"model.norm", "disk"},
                                    {"lm_head", "cuda"}}));
  EXPECT_EQ(planned.bytes, (Bytes{{"cuda", 100}, {"cpu", 100}, {"disk", 110}}));
}

TEST(DeviceMap, PrivateCpuCountsOneCopyPerLocalRank) {
  std::vector<DeviceBudget> b = {{"cpu", 400, 4}, {"disk", UINT64_MAX, 1}};
  // 4 copies: the embedding costs 400 and fills the budget; the rest goes to disk.
  const auto planned = plan_device_map(decoder(), b, MapStrategy::kSequential);
  EXPECT_EQ(
      planned.map,
      (DeviceMap{{"model.embed_tokens", "cpu"}, {"model.layers", "disk"}, {"model.norm", "disk"}, {"lm_head", "cpu"}}));
  EXPECT_EQ(planned.bytes, (Bytes{{"cpu", 100}, {"disk", 210}}));  // tensor bytes, each once
}

TEST(DeviceMap, NothingFitsNamesTheModuleAndEveryBudget) {
  try {
    plan_device_map(decoder(), budgets({{"cuda", 50}, {"cpu", 60}, {"disk", 0}}), MapStrategy::kSequential);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    const std::string m = e.what();
    EXPECT_NE(m.find("'model.embed_tokens' (100 B) fits on no device"), std::string::npos) << m;
    EXPECT_NE(m.find("cuda 0 B of 50 B"), std::string::npos) << m;
    EXPECT_NE(m.find("cpu 0 B of 60 B"), std::string::npos) << m;
    EXPECT_NE(m.find("disk 0 B of 0 B"), std::string::npos) << m;
  }
}

TEST(DeviceMap, LongestPrefixWinsOnComponentBoundaries) {
  const DeviceMap map = {{"", "cuda"}, {"layers.1", "cpu"}, {"layers.1.mlp", "disk"}};
  EXPECT_EQ(resolve_devices(map, {"layers.1.attn.w", "layers.1.mlp.w", "layers.10.w", "layers.1", "embed.w"}),
            (std::vector<std::string>{"cpu", "disk", "cuda", "cpu", "cuda"}));
  EXPECT_TRUE(prefix_covers("layers.1", "layers.1.w"));
  EXPECT_FALSE(prefix_covers("layers.1", "layers.10.w"));
  EXPECT_FALSE(prefix_covers("layers.1", "layers.1w"));
}

TEST(DeviceMap, AnUncoveredTensorIsAnErrorNamingItUnlessACatchAllExists) {
  const DeviceMap map = {{"model", "cpu"}};
  try {
    resolve_devices(map, {"model.w", "lm_head.weight"});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'lm_head.weight' is on no device"), std::string::npos) << e.what();
  }
  EXPECT_EQ(resolve_devices({{"model", "cpu"}, {"", "disk"}}, {"model.w", "lm_head.weight"}),
            (std::vector<std::string>{"cpu", "disk"}));
  EXPECT_THROW(resolve_devices({{"model", "cpu"}, {"model", "disk"}}, {"model.w"}), Error);
}

TEST(DeviceMap, DevicesAndBudgetsParseAsTransformersWritesThem) {
  EXPECT_EQ(normalize_device("0"), "cuda:0");
  EXPECT_EQ(normalize_device("cuda:03"), "cuda:3");
  EXPECT_EQ(normalize_device("disk"), "disk");
  EXPECT_THROW(normalize_device("gpu"), Error);
  EXPECT_THROW(normalize_device("cuda:"), Error);
  EXPECT_EQ(parse_max_memory("cuda=20GiB,cpu=60GB,1=1KiB"),
            (Bytes{{"cuda", 20ull << 30}, {"cpu", 60'000'000'000}, {"cuda:1", 1024}}));
  EXPECT_THROW(parse_max_memory("cuda20GiB"), Error);
  EXPECT_THROW(parse_max_memory("cpu=1GB,cpu=2GB"), Error);
  EXPECT_TRUE(device_rank("cuda") < device_rank("cuda:0") && device_rank("cuda:9") < device_rank("cpu") &&
              device_rank("cpu") < device_rank("disk"));
  EXPECT_EQ(parse_map_strategy("auto"), MapStrategy::kBalanced);
  EXPECT_THROW(parse_map_strategy("fastest"), Error);
}

TEST(DeviceMap, MapsParseFromTheCommandLineOrJson) {
  EXPECT_EQ(parse_device_map("model.layers.0=cuda,model=cpu,=disk"),
            (DeviceMap{{"model.layers.0", "cuda"}, {"model", "cpu"}, {"", "disk"}}));
  EXPECT_EQ(parse_device_map(R"({"model.embed_tokens": 0, "lm_head": "cuda:1", "": "cpu"})"),
            (DeviceMap{{"model.embed_tokens", "cuda:0"}, {"lm_head", "cuda:1"}, {"", "cpu"}}));
  EXPECT_THROW(parse_device_map("model"), Error);
  EXPECT_THROW(parse_device_map("a=cpu,a=disk"), Error);
  EXPECT_THROW(parse_device_map(R"({"a": [1]})"), Error);
  EXPECT_THROW(parse_device_map("{not json"), Error);
}

TEST(DeviceMap, WithoutAModelLayersAreWholeInNaturalOrder) {
  Catalog catalog;
  for (const char* name : {"lm_head.weight", "model.embed.weight", "model.layers.10.w", "model.layers.2.w"}) {
    TensorInfo t;
    t.name = name;
    t.dtype = DType::kF32;
    t.shape = {3};
    catalog.tensors.push_back(t);  // sorted by name, as open_catalog leaves them
  }
  std::vector<std::string> names;
  for (const TensorInfo& t : catalog.tensors) names.push_back(t.name);
  const ModelLayout layout = checkpoint_layout(catalog, names, std::vector<DType>(names.size(), DType::kBF16));
  std::vector<std::string> order;
  for (const ModelTensor& t : layout.tensors) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"lm_head.weight", "model.embed.weight", "model.layers.2.w",
                                             "model.layers.10.w"}));
  EXPECT_EQ(layout.no_split, (std::vector<std::string>{"model.layers.10", "model.layers.2"}));
  EXPECT_EQ(layout.tensors[0].bytes, 6u);  // sized as loaded: 3 BF16
}

}  // namespace
}  // namespace shardcast
