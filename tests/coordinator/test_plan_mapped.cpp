// make_plan with map_files: which tensors become mapped runs of the checkpoint file, and why the others are staged.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "coordinator/plan.h"
#include "coordinator/synth.h"
#include "tests/support/safetensors_bytes.h"
#include "tests/support/temp_dir.h"

namespace shardcast {
namespace {

using testing::TempDir;

// a F32 [0,8), b I16 [8,14), c F32 [14,18) (offset 14: not a multiple of 4), d U8 [18,20), e F32 [20,24). The header
// is padded so the data starts at a multiple of 8, as safetensors writes it.
Catalog odd_catalog(const TempDir& dir) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I16","shape":[3],"data_offsets":[8,14]},)"
      R"("c":{"dtype":"F32","shape":[1],"data_offsets":[14,18]},"d":{"dtype":"U8","shape":[2],"data_offsets":[18,20]},)"
      R"("e":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}})";
  testing::write_file(dir / "model.safetensors", testing::padded_safetensors_bytes(header, std::string(24, '\x01')));
  return open_catalog(dir.path());
}

// Each tensor's source, and the mapped runs as "name,name@segment.file_offset".
struct Sources {
  std::map<std::string, TensorSource> of;
  std::vector<std::string> runs;
};

Sources sources(const Catalog& catalog, const Plan& plan) {
  Sources out;
  for (const PlannedSegment& segment : plan.segments) {
    std::string run;
    for (const PlannedTensor& p : segment.tensors) {
      const TensorInfo& t = catalog.tensors[p.catalog_index];
      out.of[t.name] = p.source;
      if (!segment.mapped) continue;
      EXPECT_EQ(segment.file_offset % kTensorAlignment, 0u);
      EXPECT_EQ(segment.file_offset + p.offset, t.file_offset) << t.name << ": a mapped tensor is at its file offset";
      EXPECT_LE(p.offset + p.nbytes, segment.size);
      run += (run.empty() ? "" : ",") + t.name;
    }
    if (segment.mapped) out.runs.push_back(run);
  }
  return out;
}

TEST(PlanMapped, AdjacentTensorsInTheirOwnDtypeAreMappedRunsAndTheRestIsStagedSayingWhy) {
  TempDir dir;
  const Catalog catalog = odd_catalog(dir);
  LoadRequest request;
  request.map_files = MapFiles::kAuto;
  const Plan plan = make_plan(catalog, request, 2);
  const Sources s = sources(catalog, plan);
  EXPECT_EQ(s.of.at("a"), TensorSource::kMapped);
  EXPECT_EQ(s.of.at("b"), TensorSource::kMapped);
  EXPECT_EQ(s.of.at("c"), TensorSource::kUnaligned);
  EXPECT_EQ(s.of.at("d"), TensorSource::kMapped);
  EXPECT_EQ(s.of.at("e"), TensorSource::kMapped);
  EXPECT_EQ(s.runs, (std::vector<std::string>{"a,b", "d,e"}));  // c, staged, breaks the run
  EXPECT_EQ(plan.tensor_bytes, 24u);
  EXPECT_EQ(plan.tensor_count, 5u);

  request.tensors = {"a", "e"};  // a gap between selected tensors is a new run: nothing unselected is mapped in
  EXPECT_EQ(sources(catalog, make_plan(catalog, request, 2)).runs, (std::vector<std::string>{"a", "e"}));
}

TEST(PlanMapped, ConversionNeverNetworkFileSystemsAndBinAreStagedWithTheirReason) {
  TempDir dir;
  Catalog catalog = odd_catalog(dir);
  LoadRequest request;
  request.map_files = MapFiles::kAuto;
  request.dtype = DType::kF64;
  Sources s = sources(catalog, make_plan(catalog, request, 1));
  EXPECT_EQ(s.of.at("a"), TensorSource::kConverted);
  EXPECT_EQ(s.of.at("b"), TensorSource::kMapped);  // integers keep their dtype
  EXPECT_EQ(s.runs, (std::vector<std::string>{"b", "d"}));

  request.dtype.reset();
  request.map_files = MapFiles::kNever;
  for (const auto& [name, source] : sources(catalog, make_plan(catalog, request, 1)).of) {
    EXPECT_EQ(source, TensorSource::kStaged) << name;
  }

  catalog.shards[0].network_fs = true;
  request.map_files = MapFiles::kAuto;
  EXPECT_EQ(sources(catalog, make_plan(catalog, request, 1)).of.at("a"), TensorSource::kNetworkFs);
  request.map_files = MapFiles::kAlways;
  EXPECT_EQ(sources(catalog, make_plan(catalog, request, 1)).of.at("a"), TensorSource::kMapped);

  TempDir bin;
  synthesize_checkpoint(bin / "ckpt", 1'000'000, 0, CheckpointFormat::kTorchBin);
  const Catalog bin_catalog = open_catalog(bin / "ckpt");
  for (const auto& [name, source] : sources(bin_catalog, make_plan(bin_catalog, request, 1)).of) {
    EXPECT_EQ(source, TensorSource::kBin) << name;
  }
}

TEST(PlanMapped, TheChoiceIsPartOfTheLayoutHashSoRanksThatDisagreeCannotAttach) {
  TempDir dir;
  const Catalog catalog = odd_catalog(dir);
  LoadRequest mapped, staged;
  mapped.map_files = MapFiles::kAuto;
  EXPECT_NE(make_plan(catalog, mapped, 2).layout_hash, make_plan(catalog, staged, 2).layout_hash);
  EXPECT_EQ(parse_map_files("always"), MapFiles::kAlways);
  EXPECT_THROW(parse_map_files("sometimes"), Error);
}

// Five uneven safetensors shards (49%, 20%, 15%, 10%, 6% of S), bf16 tensors packed from data offset 0x100.
Catalog uneven_catalog() {
  Catalog c;
  const uint64_t shard_elements[] = {2'450'000, 1'000'000, 750'000, 500'000, 300'000};
  for (uint32_t s = 0; s < 5; ++s) {
    ShardInfo shard;
    shard.file = "model-0000" + std::to_string(s + 1) + "-of-00005.safetensors";
    shard.format = CheckpointFormat::kSafetensors;
    c.shards.push_back(shard);
    uint64_t offset = 0x100;
    for (uint64_t part : {shard_elements[s] / 2, shard_elements[s] / 3,
                          shard_elements[s] - shard_elements[s] / 2 - shard_elements[s] / 3}) {
      TensorInfo t;
      t.name = "s" + std::to_string(s) + ".t" + std::to_string(c.tensors.size());
      t.dtype = DType::kBF16;
      t.shape = {static_cast<int64_t>(part)};
      t.shard = s;
      t.has_file_range = true;
      t.file_offset = offset;
      offset += t.nbytes();
      c.tensors.push_back(t);
    }
  }
  std::sort(c.tensors.begin(), c.tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return c;
}

// Bytes each node reads; checks every element is read exactly once and the pieces cover each segment in order.
std::vector<uint64_t> bytes_per_node(const Catalog& catalog, const Plan& plan, int nodes) {
  std::vector<uint64_t> bytes(nodes, 0);
  for (const PlannedSegment& segment : plan.segments) {
    std::vector<uint64_t> next(segment.tensors.size(), 0);  // the next element each tensor's reads must start at
    for (const PlannedRead& r : segment.reads) {
      const TensorInfo& t = catalog.tensors[segment.tensors[r.tensor].catalog_index];
      EXPECT_EQ(r.first, next[r.tensor]) << t.name;
      next[r.tensor] = r.first + r.count;
      bytes.at(r.node) += r.count * dtype_size(t.dtype);
      const uint64_t end = segment.tensors[r.tensor].offset + (r.first + r.count) * dtype_size(t.dtype);
      const bool inside = std::any_of(segment.pieces.begin(), segment.pieces.end(), [&](const SegmentPiece& p) {
        return p.node == r.node && p.begin <= end - r.count * dtype_size(t.dtype) && end <= p.end;
      });
      EXPECT_TRUE(inside) << t.name << ": a read outside the pieces of its node";
      if (r.first + r.count < t.numel()) {
        EXPECT_EQ((t.file_offset + (r.first + r.count) * dtype_size(t.dtype)) % 4096, 0u) << t.name << " cut off-page";
      }
    }
    for (size_t i = 0; i < segment.tensors.size(); ++i) {
      EXPECT_EQ(next[i], catalog.tensors[segment.tensors[i].catalog_index].numel()) << "elements read once";
    }
    uint64_t at = 0;
    for (const SegmentPiece& p : segment.pieces) {
      EXPECT_EQ(p.begin, at);
      at = p.end;
    }
    EXPECT_EQ(at, segment.size);
  }
  return bytes;
}

TEST(PlanSplit, FiveUnevenShardsOnThreeNodesReadAtMostAThirdPlusAPageEach) {
  const Catalog catalog = uneven_catalog();
  const uint64_t total = catalog.tensor_bytes();
  for (MapFiles map_files : {MapFiles::kNever, MapFiles::kAlways}) {
    LoadRequest request;
    request.map_files = map_files;
    request.node_share_slack = 0;
    const Plan plan = make_plan(catalog, request, 2, 3);
    const std::vector<uint64_t> bytes = bytes_per_node(catalog, plan, 3);
    EXPECT_EQ(bytes[0] + bytes[1] + bytes[2], total) << "the job reads S";
    for (int n = 0; n < 3; ++n) EXPECT_LE(bytes[n], (total + 2) / 3 + 4096 + 2) << "node " << n;
    // Whole shards would give one node 49% of S; the split cuts the largest shard's run, which is then staged
    // everywhere rather than mapped on one node.
    size_t split = 0;
    for (const PlannedSegment& segment : plan.segments) {
      if (segment.sole_node() >= 0) continue;
      ++split;
      EXPECT_FALSE(segment.mapped);
      if (map_files == MapFiles::kAlways) {
        EXPECT_EQ(segment.tensors[0].source, TensorSource::kSplit);
      }
    }
    EXPECT_GE(split, 1u);
  }
}

TEST(PlanSplit, WithinTheSlackNothingIsCutAndOneNodeReadsEverythingWhole) {
  const Catalog catalog = uneven_catalog();
  LoadRequest request;
  request.map_files = MapFiles::kAlways;
  for (int nodes : {1, 3}) {
    request.node_share_slack = nodes == 1 ? 0 : 64ull << 20;  // 64 MiB: more than this checkpoint
    const Plan plan = make_plan(catalog, request, 2, nodes);
    bytes_per_node(catalog, plan, nodes);
    for (const PlannedSegment& segment : plan.segments) {
      EXPECT_GE(segment.sole_node(), 0);
      EXPECT_TRUE(segment.mapped);
      EXPECT_EQ(segment.reads.size(), segment.tensors.size()) << "a tensor was cut";
    }
  }
}

}  // namespace
}  // namespace shardcast
