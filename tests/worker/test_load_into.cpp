// load_into: parameters become the staged tensors (no second copy), keys are reported, strict mode throws.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "coordinator/sharded_writer.h"
#include "launch/communicator.h"
#include "tests/support/temp_dir.h"
#include "worker/session.h"

namespace shardcast {
namespace {

using testing::TempDir;

struct Tiny : torch::nn::Module {
  Tiny() {
    embed = register_parameter("embed", torch::zeros({4, 3}));
    head = register_parameter("head", embed);  // tied: one tensor, two names
    norm = register_buffer("norm", torch::zeros({3}));
    extra = register_parameter("extra", torch::zeros({2}));
  }
  torch::Tensor embed, head, norm, extra;
};

TensorData f32(const std::string& name, std::vector<int64_t> shape, float first) {
  TensorData t;
  t.name = name;
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  std::vector<float> values(t.numel());
  for (size_t i = 0; i < values.size(); ++i) values[i] = first + static_cast<float>(i);
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  t.bytes = Bytes::from_vector(std::move(bytes));
  return t;
}

void write_checkpoint(const std::filesystem::path& dir) {
  save_sharded({f32("embed", {4, 3}, 1), f32("head", {4, 3}, 1), f32("norm", {3}, 100), f32("junk", {5}, 0)}, dir);
}

TEST(LoadInto, AssignReplacesMetaTargetsAndTiedNamesShareTheLoadedTensor) {
  TempDir dir;
  write_checkpoint(dir / "ckpt");
  Session session(make_self_communicator());
  at::Tensor tied = torch::empty({4, 3}, torch::kMeta);
  NamedTensors targets{{"embed", tied}, {"head", tied}, {"norm", torch::empty({3}, torch::kMeta)}};
  LoadOptions options;
  options.placement = Placement::kCopyOnWrite;
  LoadReport report = session.load_into(targets, dir / "ckpt", options, /*strict=*/false, /*assign=*/true);
  EXPECT_EQ(report.loaded, 2u);
  EXPECT_EQ(report.unexpected_keys, std::vector<std::string>{"junk"});
  ASSERT_EQ(targets.size(), 3u);
  for (const auto& [name, t] : targets) EXPECT_FALSE(t.is_meta()) << name;
  EXPECT_TRUE(targets[0].second.is_same(targets[1].second)) << "tied names came apart";
  EXPECT_EQ(targets[0].second[3][2].item<float>(), 12.0f);
  EXPECT_EQ(targets[2].second[2].item<float>(), 102.0f);
}

TEST(LoadInto, FillingAMetaTargetIsRefusedNamingItAndAssign) {
  TempDir dir;
  write_checkpoint(dir / "ckpt");
  Session session(make_self_communicator());
  NamedTensors targets{{"norm", torch::empty({3}, torch::kMeta)}};
  try {
    session.load_into(targets, dir / "ckpt", {}, /*strict=*/false, /*assign=*/false);
    FAIL() << "a meta target was filled";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'norm' is on the meta device"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("assign"), std::string::npos) << e.what();
  }
}

TEST(LoadInto, ReportsMissingAndUnexpectedKeysAndLoadsTiedParametersOnce) {
  TempDir dir;
  write_checkpoint(dir / "ckpt");
  Session session(make_self_communicator());
  Tiny module;
  LoadReport report = session.load_into(module, dir / "ckpt", {}, /*strict=*/false);
  EXPECT_EQ(report.missing_keys, std::vector<std::string>{"extra"});
  EXPECT_EQ(report.unexpected_keys, std::vector<std::string>{"junk"});
  EXPECT_TRUE(report.mismatched_keys.empty());
  EXPECT_EQ(report.loaded, 2u);  // embed (= head) and norm
  EXPECT_EQ(module.embed[3][2].item<float>(), 12.0f);
  EXPECT_EQ(module.head[0][0].item<float>(), 1.0f);
  EXPECT_EQ(module.head.data_ptr(), module.embed.data_ptr());
  EXPECT_EQ(module.norm[2].item<float>(), 102.0f);
  EXPECT_EQ(module.extra[0].item<float>(), 0.0f);
  EXPECT_TRUE(module.embed.requires_grad());
}

TEST(LoadInto, ATiedParameterStoredUnderOneNameIsNotMissing) {
  TempDir dir;
  save_sharded({f32("embed", {4, 3}, 5), f32("norm", {3}, 0), f32("extra", {2}, 0)}, dir / "ckpt");  // no "head"
  Session session(make_self_communicator());
  Tiny module;
  LoadReport report = session.load_into(module, dir / "ckpt");  // strict: would throw on a missing key
  EXPECT_TRUE(report.missing_keys.empty());
  EXPECT_EQ(module.head[0][0].item<float>(), 5.0f);
}

TEST(LoadInto, StrictModeThrowsListingEveryKey) {
  TempDir dir;
  write_checkpoint(dir / "ckpt");
  Session session(make_self_communicator());
  Tiny module;
  try {
    session.load_into(module, dir / "ckpt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("missing keys [extra], unexpected keys [junk]"), std::string::npos)
        << e.what();
  }
}

TEST(LoadInto, ShapeMismatchIsReportedNotLoaded) {
  TempDir dir;
  save_sharded({f32("embed", {3, 4}, 1), f32("norm", {3}, 0), f32("extra", {2}, 0)}, dir / "ckpt");
  Session session(make_self_communicator());
  Tiny module;
  LoadReport report = session.load_into(module, dir / "ckpt", {}, false);
  ASSERT_EQ(report.mismatched_keys.size(), 1u);
  EXPECT_EQ(report.mismatched_keys[0], "embed: checkpoint [3,4] vs module [4,3]");
  EXPECT_EQ(module.embed.sum().item<float>(), 0.0f);
}

TEST(LoadInto, SharedPlacementMakesParametersViewsNotCopies) {
  TempDir dir;
  write_checkpoint(dir / "ckpt");
  Session session(make_self_communicator());
  Tiny module;
  const void* before = module.embed.data_ptr();
  LoadOptions options;
  options.placement = Placement::kCopyOnWrite;
  session.load_into(module, dir / "ckpt", options, false);
  EXPECT_NE(module.embed.data_ptr(), before) << "the parameter now points into the segment";
  module.embed.data().add_(1);  // copy-on-write: writable
  EXPECT_EQ(module.embed[0][0].item<float>(), 2.0f);
}

TEST(LoadInto, PrivatePlacementFillsParametersInPlace) {
  TempDir dir;
  write_checkpoint(dir / "ckpt");
  Session session(make_self_communicator());
  Tiny module;
  const void* before = module.embed.data_ptr();
  LoadOptions options;
  options.placement = Placement::kPrivate;
  session.load_into(module, dir / "ckpt", options, false);
  EXPECT_EQ(module.embed.data_ptr(), before) << "no second allocation";
  EXPECT_EQ(module.embed[1][0].item<float>(), 4.0f);
}

}  // namespace
}  // namespace shardcast
