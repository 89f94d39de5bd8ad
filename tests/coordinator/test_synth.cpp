#include <gtest/gtest.h>

#include <set>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "coordinator/synth.h"
#include "coordinator/verify.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::TempDir;

TEST(Synth, LayoutHitsTheRequestedSizeExactlyWithEveryDtype) {
  for (uint64_t size : {1'000'000ull, 7'654'321ull, 64'000'000ull}) {
    auto specs = synth_layout(size, false);
    uint64_t total = 0;
    std::set<DType> dtypes;
    for (const auto& s : specs) {
      total += s.nbytes();
      dtypes.insert(s.dtype);
    }
    EXPECT_EQ(total, size);
    EXPECT_EQ(dtypes.size(), static_cast<size_t>(kDTypeCount)) << "size " << size;
  }
}

TEST(Synth, TooSmallSizeIsAClearError) {
  EXPECT_THROW(synth_layout(1000, false), Error);
}

TEST(Synth, SameInputsGiveTheSameBytes) {
  TempDir dir;
  synthesize_checkpoint(dir / "a", 3'000'000, 0, CheckpointFormat::kSafetensors);
  synthesize_checkpoint(dir / "b", 3'000'000, 0, CheckpointFormat::kSafetensors);
  Catalog a = open_catalog(dir / "a");
  EXPECT_GE(a.shards.size(), 4u);  // default max shard size: a quarter of the total
  EXPECT_EQ(digest_checkpoint(a), digest_checkpoint(open_catalog(dir / "b")));
  EXPECT_TRUE(verify_checkpoint(dir / "a").problems.empty());
}

TEST(Synth, BinFormatHoldsOnlyTorchDtypesAndVerifies) {
  TempDir dir;
  synthesize_checkpoint(dir / "bin", 2'000'000, 600'000, CheckpointFormat::kTorchBin);
  Catalog c = open_catalog(dir / "bin");
  EXPECT_EQ(c.format, CheckpointFormat::kTorchBin);
  EXPECT_GE(c.shards.size(), 3u);
  EXPECT_EQ(c.tensor_bytes(), 2'000'000u);
  EXPECT_TRUE(verify_checkpoint(dir / "bin").problems.empty());
}

}  // namespace
}  // namespace shardcast
