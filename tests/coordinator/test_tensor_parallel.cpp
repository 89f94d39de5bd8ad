// Slice arithmetic and the ring's stream plan, checked against element-by-element references.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "coordinator/catalog.h"
#include "coordinator/stream_plan.h"
#include "coordinator/synth.h"
#include "coordinator/tensor_parallel.h"
#include "core/file.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::TempDir;

TensorParallel group(int size, int rank, std::vector<SliceRule> rules) {
  TensorParallel tp;
  tp.size = size;
  tp.rank = rank;
  tp.rules = std::move(rules);
  return tp;
}

// Applies a block: dst[dst + row * dst_pitch + i] = src[src + row * src_pitch + i].
void apply(const CopyBlock& b, const std::vector<uint8_t>& src, std::vector<uint8_t>& dst, uint64_t src_base = 0) {
  for (uint64_t row = 0; row < b.rows; ++row) {
    for (uint64_t i = 0; i < b.width; ++i)
      dst.at(b.dst + row * b.dst_pitch + i) = src.at(b.src - src_base + row * b.src_pitch + i);
  }
}

// The slice as torch.tensor_split(t, size, dim)[rank] would give it, element by element.
std::vector<uint8_t> reference_slice(const std::vector<int64_t>& shape, size_t esize, int dim, int64_t begin,
                                     int64_t length, const std::vector<uint8_t>& bytes) {
  std::vector<uint8_t> out;
  const int64_t numel = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  for (int64_t e = 0; e < numel; ++e) {
    int64_t rest = e, coord = 0;
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
      if (d == dim) coord = rest % shape[d];
      rest /= shape[d];
    }
    if (coord < begin || coord >= begin + length) continue;
    out.insert(out.end(), bytes.begin() + e * esize, bytes.begin() + (e + 1) * esize);
  }
  return out;
}

TEST(TensorParallel, RulesParseAndBadOnesNameTheText) {
  SliceRule rule = parse_slice_rule("model.layers.*.q_proj.weight:0");
  EXPECT_EQ(rule.pattern, "model.layers.*.q_proj.weight");
  EXPECT_EQ(rule.dim, 0);
  EXPECT_EQ(parse_slice_rule("*.o_proj.weight:1").dim, 1);
  for (const char* bad : {"no_dim", ":0", "w:", "w:x", "w:-1", "w:1x"}) {
    try {
      parse_slice_rule(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

TEST(TensorParallel, PatternsMatchExactPrefixAndSuffix) {
  TensorParallel tp = group(2, 0, {{"a.weight", 0}, {"b.*", 1}, {"*.bias", 0}});
  EXPECT_EQ(find_slice_rule(tp, "a.weight")->dim, 0);
  EXPECT_EQ(find_slice_rule(tp, "b.anything")->dim, 1);
  EXPECT_EQ(find_slice_rule(tp, "x.bias")->pattern, "*.bias");
  EXPECT_EQ(find_slice_rule(tp, "a.weight2"), nullptr);
}

TEST(TensorParallel, SlicesFollowTensorSplitWithTheRemainderOnTheFirstRanks) {
  TensorSpec t{"w", DType::kF32, {5, 4}};
  RankSlice r0 = rank_slice(t, group(2, 0, {{"w", 0}})), r1 = rank_slice(t, group(2, 1, {{"w", 0}}));
  EXPECT_EQ(r0.shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(r1.shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(r1.begin, 3);
  EXPECT_EQ(r1.block.src, 48u);  // 3 rows of 4 floats
  EXPECT_EQ(r1.block.bytes(), 32u);
  EXPECT_EQ(r1.block.rows, 1u) << "a dim-0 slice is one contiguous run";

  TensorSpec w{"w", DType::kF32, {3, 6}};
  RankSlice c = rank_slice(w, group(3, 1, {{"w", 1}}));
  EXPECT_EQ(c.shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(c.block.src, 8u);
  EXPECT_EQ(c.block.width, 8u);
  EXPECT_EQ(c.block.rows, 3u);
  EXPECT_EQ(c.block.src_pitch, 24u);
  EXPECT_EQ(c.block.dst_pitch, 8u);

  EXPECT_FALSE(rank_slice(w, group(1, 0, {{"w", 1}})).sliced) << "a group of one holds whole tensors";
  EXPECT_FALSE(rank_slice(w, group(2, 0, {{"other", 0}})).sliced);
}

TEST(TensorParallel, ADimOutsideTheShapeNamesTheTensor) {
  TensorSpec bias{"model.bias", DType::kF32, {8}};
  try {
    rank_slice(bias, group(2, 0, {{"model.*", 1}}));
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'model.bias' of shape [8] has no dim 1"), std::string::npos)
        << e.what();
  }
}

TEST(TensorParallel, SizeMustDivideTheJob) {
  EXPECT_EQ(tp_for_rank(group(2, 0, {}), 5, 6).rank, 1);
  EXPECT_THROW(tp_for_rank(group(4, 0, {}), 0, 6), Error);
}

// Every shape, dim, group size and rank: the block copies exactly the reference slice, and clipping the block to
// any chunking of the source and applying the pieces gives the same bytes.
TEST(TensorParallel, BlocksAndClippedPiecesEqualTheReferenceSlice) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int64_t> shape(1 + rng() % 3);
    for (int64_t& d : shape) d = 1 + rng() % 7;
    const DType dtype = std::vector<DType>{DType::kU8, DType::kBF16, DType::kF32, DType::kF64}[rng() % 4];
    const int dim = rng() % shape.size(), size = 1 + rng() % 4;
    TensorSpec t{"w", dtype, shape};
    std::vector<uint8_t> bytes(t.nbytes());
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + 7);
    for (int rank = 0; rank < size; ++rank) {
      RankSlice s = rank_slice(t, group(size, rank, {{"w", dim}}));
      const auto expected = s.sliced ? reference_slice(shape, dtype_size(dtype), dim, s.begin, s.length, bytes) : bytes;
      std::vector<uint8_t> whole(s.block.bytes());
      apply(s.block, bytes, whole);
      ASSERT_EQ(whole, expected) << "trial " << trial;

      const uint64_t chunk = 1 + rng() % (bytes.size() + 3);
      std::vector<uint8_t> pieced(s.block.bytes(), 0xEE);
      uint64_t copied = 0;
      for (uint64_t begin = 0; begin < bytes.size(); begin += chunk) {
        const uint64_t end = std::min<uint64_t>(bytes.size(), begin + chunk);
        for (const CopyBlock& piece : clip(s.block, begin, end)) {
          ASSERT_GE(piece.src, begin);
          ASSERT_LE(piece.src_end(), end);
          apply(piece, bytes, pieced);
          copied += piece.bytes();
        }
      }
      ASSERT_EQ(pieced, expected) << "trial " << trial << " chunk " << chunk;
      ASSERT_EQ(copied, expected.size()) << "a byte was copied twice";
    }
  }
}

TEST(StreamPlan, ChunkReadsOfAllRanksRebuildEveryTensorOnce) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'500'000, 400'000, CheckpointFormat::kSafetensors);
  const Catalog catalog = open_catalog(dir / "ckpt");
  std::vector<uint32_t> wanted;
  for (uint32_t i = 0; i < catalog.tensors.size(); i += 2) wanted.push_back(i);  // every other tensor
  for (uint64_t chunk_bytes : {4096ull, 100'000ull, 10'000'000ull}) {
    const StreamPlan plan = make_stream_plan(catalog, wanted, chunk_bytes);
    ASSERT_EQ(plan.tensors.size(), wanted.size());
    std::vector<uint8_t> stream(plan.total_bytes, 0), filled(plan.total_bytes, 0);
    for (uint64_t k = 0; k < plan.chunk_count(); ++k) {
      for (int part = 0; part < 3; ++part) {
        for (const FileRead& read : chunk_reads(catalog, plan, k, part, 3)) {
          ASSERT_LE(read.slot_offset + read.length, plan.chunk_end(k) - plan.chunk_begin(k));
          File::open_read(catalog.shards[read.shard].path)
              .read_exact_at(stream.data() + plan.chunk_begin(k) + read.slot_offset, read.length, read.file_offset);
          for (uint64_t i = 0; i < read.length; ++i) ++filled[plan.chunk_begin(k) + read.slot_offset + i];
        }
      }
    }
    EXPECT_EQ(std::count(filled.begin(), filled.end(), 1), static_cast<long>(plan.total_bytes))
        << "every stream byte is read exactly once (chunk " << chunk_bytes << ")";
    for (const StreamedTensor& s : plan.tensors) {
      const TensorInfo& t = catalog.tensors[s.catalog_index];
      std::vector<uint8_t> direct(t.nbytes());
      File::open_read(catalog.shards[t.shard].path).read_exact_at(direct.data(), direct.size(), t.file_offset);
      ASSERT_TRUE(std::equal(direct.begin(), direct.end(), stream.begin() + s.offset)) << t.name;
    }
  }
}

TEST(StreamPlan, BinShardsHaveNoByteRangesToStream) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 1'000'000, 0, CheckpointFormat::kTorchBin, true);
  const Catalog catalog = open_catalog(dir / "ckpt");
  try {
    make_stream_plan(catalog, {0}, 1 << 20);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no byte range to stream"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shardcast
