#include <gtest/gtest.h>

#include <cstring>

#include "coordinator/catalog.h"
#include "coordinator/convert.h"
#include "coordinator/digest.h"
#include "coordinator/shard_reader.h"
#include "coordinator/synth.h"
#include "coordinator/verify.h"
#include "core/dtype_cast.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::TempDir;

TEST(Convert, ReshardingKeepsEveryTensorBitExact) {
  TempDir dir;
  synthesize_checkpoint(dir / "src", 4'000'000, 0, CheckpointFormat::kSafetensors);
  ConvertOptions options;
  options.max_shard_size = 700'000;
  ConvertResult r = convert_checkpoint(dir / "src", dir / "dst", options);
  EXPECT_EQ(r.cast, 0u);
  Catalog dst = open_catalog(dir / "dst");
  EXPECT_GT(dst.shards.size(), 4u);
  for (const ShardInfo& s : dst.shards) {
    // Only a tensor larger than the limit may make a shard larger than it (plus its header).
    if (s.tensor_count > 1) {
      EXPECT_LE(s.file_size, 700'000u + 64'000u) << s.file;
    }
  }
  EXPECT_EQ(digest_checkpoint(open_catalog(dir / "src")), digest_checkpoint(dst));
  EXPECT_TRUE(verify_checkpoint(dir / "dst").problems.empty());
}

TEST(Convert, DtypeCastsFloatsOnlyAndRoundsLikeTorch) {
  TempDir dir;
  synthesize_checkpoint(dir / "src", 2'000'000, 0, CheckpointFormat::kSafetensors);
  ConvertOptions options;
  options.dtype = DType::kF32;
  convert_checkpoint(dir / "src", dir / "f32", options);
  Catalog src = open_catalog(dir / "src");
  Catalog f32 = open_catalog(dir / "f32");
  ASSERT_EQ(src.tensors.size(), f32.tensors.size());
  for (size_t i = 0; i < src.tensors.size(); ++i) {
    const DType before = src.tensors[i].dtype;
    const bool floating =
        before == DType::kF16 || before == DType::kBF16 || before == DType::kF32 || before == DType::kF64;
    EXPECT_EQ(f32.tensors[i].dtype, floating ? DType::kF32 : before) << src.tensors[i].name;
  }
  // Back to the original dtypes: widening then narrowing is exact for values that came from bf16/f16.
  options.dtype = DType::kBF16;
  convert_checkpoint(dir / "f32", dir / "bf16", options);
  Catalog bf16 = open_catalog(dir / "bf16");
  std::map<std::string, std::string> want, got;
  read_all_tensors(src, [&](const TensorInfo& t, const Bytes& b) {
    if (t.dtype != DType::kBF16) return;
    want[t.name] = std::string(reinterpret_cast<const char*>(b.data), b.size);
  });
  read_all_tensors(bf16, [&](const TensorInfo& t, const Bytes& b) {
    if (want.count(t.name)) got[t.name] = std::string(reinterpret_cast<const char*>(b.data), b.size);
  });
  EXPECT_FALSE(want.empty());
  EXPECT_EQ(want, got);
}

TEST(Convert, RejectsNonFloatingTargetDtype) {
  TempDir dir;
  synthesize_checkpoint(dir / "src", 1'000'000, 0, CheckpointFormat::kSafetensors);
  ConvertOptions options;
  options.dtype = DType::kI32;
  EXPECT_THROW(convert_checkpoint(dir / "src", dir / "dst", options), Error);
}

}  // namespace
}  // namespace shardcast
