// Placement from the page cache (map_files): tensors in their own dtype are mappings of the checkpoint files, bit-exact
// and staged nowhere; the rest is staged and says why; a file changed under a load fails every rank naming it, and one
// truncated later dies with a SIGBUS that says so.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "coordinator/synth.h"
#include "tests/support/forked_sessions.h"
#include "tests/support/safetensors_bytes.h"
#include "tests/support/temp_dir.h"
#include "worker/session.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using namespace testing::forked;

// "name source" per tensor of the last load, for the tensors whose source is not `usual`.
std::string unusual_sources(const LoadStats& stats, TensorSource usual) {
  std::string out;
  for (const auto& [name, source] : stats.tensor_sources) {
    if (source != usual) out += name + " " + std::string(source_name(source)) + "\n";
  }
  return out;
}

TEST(MappedLoad, SharedCowAndPrivateAreBitExactAndTheViewsAreTheCheckpointFilesWithNothingStaged) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 900'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = expected_digest(dir / "ckpt");
  const std::string first_shard = testing::read_file(dir / "ckpt" / "model-00001-of-00004.safetensors");
  auto outcomes = with_sessions(dir, 3, [&](Session& session, int rank) {
    std::string out;
    for (Placement placement : {Placement::kShared, Placement::kCopyOnWrite, Placement::kPrivate}) {
      LoadOptions options;
      options.placement = placement;
      StateDict state = session.load(dir / "ckpt", options);
      const LoadStats& stats = session.last_stats();
      out += std::string(placement_name(placement)) + " " + digest_of(state);
      out += unusual_sources(stats, TensorSource::kMapped);
      if (stats.node_bytes_staged != 0 || stats.segments != 0) out += "staged something\n";
      for (const auto& item : state) {
        if (item.value().numel() == 0) continue;
        const bool in_file = mapped_file(item.value().data_ptr()).find("/ckpt/model-") != std::string::npos;
        if (in_file == (placement == Placement::kPrivate)) out += item.key() + " is not where it should be\n";
      }
      if (placement == Placement::kCopyOnWrite) {
        // A write stays in this rank: neither the file nor the other ranks see it.
        for (auto& item : state) {
          if (item.value().is_floating_point() && item.value().numel() > 0) item.value().fill_(rank + 1);
        }
      }
    }
    std::ofstream(dir / ("out" + std::to_string(rank))) << out;
  });
  expect_all_succeeded(outcomes);
  const std::string want = "shared " + expected + "cow " + expected + "private " + expected;
  for (int r = 0; r < 3; ++r) EXPECT_EQ(testing::read_file(dir / ("out" + std::to_string(r))), want) << "rank " << r;
  EXPECT_EQ(testing::read_file(dir / "ckpt" / "model-00001-of-00004.safetensors"), first_shard);
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(MappedLoad, AConvertingLoadMapsWhatKeepsItsDtypeStagesTheRestAndSaysWhy) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 700'000, CheckpointFormat::kSafetensors, true);
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    LoadOptions options;
    options.dtype = "f32";
    options.map_files = MapFiles::kNever;
    const std::string staged = digest_of(session.load(dir / "ckpt", options));
    options.map_files = MapFiles::kAuto;
    StateDict state = session.load(dir / "ckpt", options);
    std::string out = digest_of(state) == staged ? "" : "digests differ\n";
    size_t mapped = 0, converted = 0;
    for (const auto& [name, source] : session.last_stats().tensor_sources) {
      mapped += source == TensorSource::kMapped;  // f32 already, or not floating
      converted += source == TensorSource::kConverted;
      const bool in_file = mapped_file(state[name].data_ptr()).find("/ckpt/model-") != std::string::npos;
      if (state[name].numel() > 0 && in_file != (source == TensorSource::kMapped)) {
        out += name + " is not where its source says\n";
      }
    }
    if (mapped == 0 || converted == 0) out += "expected a mix\n";
    EXPECT_GT(session.last_stats().node_bytes_mapped, 0u);
    EXPECT_GT(session.last_stats().node_bytes_staged, 0u);
    std::ofstream(dir / ("out" + std::to_string(rank))) << out;
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 2; ++r) EXPECT_EQ(testing::read_file(dir / ("out" + std::to_string(r))), "") << "rank " << r;
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(MappedLoad, ATensorAtAnOffsetNotAMultipleOfItsElementSizeIsStagedAndBitExact) {
  TempDir dir;
  // a F32 at data offset 0, b F32 at 6 (unaligned: torch needs 4), c U8 at 10, d F32 at 12.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[6,10]},)"
      R"("c":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"d":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
      R"("e":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}})";
  std::string data;
  for (int i = 0; i < 16; ++i) data.push_back(static_cast<char>(0x40 + i));
  testing::write_file(dir / "ckpt" / "model.safetensors", testing::padded_safetensors_bytes(header, data));
  auto outcomes = with_sessions(dir, 1, [&](Session& session, int) {
    StateDict state = session.load(dir / "ckpt");
    std::string out = unusual_sources(session.last_stats(), TensorSource::kMapped);
    for (const auto& [name, offset] : std::vector<std::pair<std::string, int>>{{"a", 0}, {"b", 6}, {"d", 12}}) {
      const at::Tensor& t = state[name];
      if (std::memcmp(t.data_ptr(), data.data() + offset, 4) != 0) out += name + " differs\n";
      if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 4 != 0) out += name + " is not aligned\n";
    }
    std::ofstream(dir / "out") << out;
  });
  expect_all_succeeded(outcomes);
  EXPECT_EQ(testing::read_file(dir / "out"), "b staged (file offset not aligned to its element size)\n");
}

// Three virtual nodes of two ranks with no slack: shards and tensors are cut between nodes at file pages, each node
// reads about a third, and every rank still gets every tensor bit-exact, mapped, staged or converted.
TEST(MappedLoad, AnEvenSplitAcrossNodesCutsTensorsAndStaysBitExact) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 1'400'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = expected_digest(dir / "ckpt");
  const std::vector<std::pair<std::string, MapFiles>> loads = {
      {"keep", MapFiles::kAuto}, {"keep", MapFiles::kNever}, {"f32", MapFiles::kAuto}, {"f32", MapFiles::kNever}};
  auto outcomes = with_sessions(
      dir, 6,
      [&](Session& session, int rank) {
        std::string digests, reads;
        for (const auto& [dtype, map_files] : loads) {
          LoadOptions options;
          options.node_share_slack = 0;
          options.map_files = map_files;
          options.dtype = dtype;
          StateDict state = session.load(dir / "ckpt", options);
          if (dtype == "keep") digests += digest_of(state);
          reads += std::to_string(session.last_stats().rank_bytes_read) + " ";
        }
        std::ofstream(dir / ("digests" + std::to_string(rank))) << digests;
        std::ofstream(dir / ("reads" + std::to_string(rank))) << reads;
      },
      std::chrono::seconds(120), /*ranks_per_node=*/2);
  expect_all_succeeded(outcomes);
  // What each node's two ranks read from storage in each load.
  std::vector<std::vector<uint64_t>> node_reads(3, std::vector<uint64_t>(loads.size(), 0));
  for (int r = 0; r < 6; ++r) {
    EXPECT_EQ(testing::read_file(dir / ("digests" + std::to_string(r))), expected + expected) << "rank " << r;
    std::istringstream in(testing::read_file(dir / ("reads" + std::to_string(r))));
    for (uint64_t& sum : node_reads[r / 2]) {
      uint64_t bytes = 0;
      in >> bytes;
      sum += bytes;
    }
  }
  uint64_t headers = 0;  // rank 0 reads every header and the index
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) headers += e.file_size();
  headers -= 3'000'000;
  for (int node = 0; node < 3; ++node) {
    for (size_t load : {1, 3}) {  // staged (map_files never): every byte a node reads is counted
      EXPECT_LE(node_reads[node][load], 3'000'000 / 3 + 4096 + headers) << "node " << node << ", load " << load;
      EXPECT_GE(node_reads[node][load], 3'000'000 / 3 - 3 * 4096) << "node " << node << ", load " << load;
    }
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

// A shard changed after rank 0 read its header and before the ranks map it: every rank fails, naming the file.
void expect_change_is_refused(const std::function<void(const fs::path&)>& change, const std::string& phrase) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 700'000, CheckpointFormat::kSafetensors, true);
  const fs::path shard = dir / "ckpt" / "model-00002-of-00003.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  auto outcomes = with_sessions(dir, 2, [&](Session& session, int rank) {
    LoadOptions options;
    options.progress = [&](const std::string& step, size_t, size_t) {
      if (rank == 0 && step == "create") change(shard);  // after the catalog, before the mapping
    };
    record(dir, rank, [&] { session.load(dir / "ckpt", options); });
  });
  expect_all_succeeded(outcomes);
  for (int r = 0; r < 2; ++r) {
    const std::string outcome = outcome_file(dir, r);
    EXPECT_CONTAINS(outcome, "model-00002-of-00003.safetensors");
    EXPECT_CONTAINS(outcome, phrase);
  }
  EXPECT_TRUE(shardcast_segments().empty());
}

TEST(MappedLoad, AShardTruncatedAfterItsHeaderWasReadFailsEveryRankNamingIt) {
  expect_change_is_refused([](const fs::path& shard) { fs::resize_file(shard, fs::file_size(shard) / 2); },
                           "changed since its header was read");
}

TEST(MappedLoad, AShardRewrittenInPlaceWithTheSameSizeFailsEveryRankNamingIt) {
  expect_change_is_refused(
      [](const fs::path& shard) {
        const timespec times[2] = {{0, UTIME_OMIT}, {1'000'000'000, 0}};  // a new mtime, as a rewrite leaves
        ASSERT_EQ(utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
      },
      "changed since its header was read");
}

TEST(MappedLoad, AShardTruncatedWhileItsTensorsAreInUseDiesWithASigbusThatNamesIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 0, CheckpointFormat::kSafetensors, true);
  const fs::path log = dir / "stderr";
  auto outcomes = with_sessions(dir, 1, [&](Session& session, int) {
    StateDict state = session.load(dir / "ckpt");
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, STDERR_FILENO);
    for (const fs::path& shard : fs::directory_iterator(dir / "ckpt")) {
      if (shard.extension() == ".safetensors") fs::resize_file(shard, 0);
    }
    double sum = 0;
    for (const auto& item : state) sum += item.value().to(at::kDouble).sum().item<double>();  // reads every page
    std::fprintf(stderr, "read them all (%f): no SIGBUS\n", sum);
  });
  ASSERT_EQ(outcomes.size(), 1u);
  EXPECT_TRUE(outcomes[0].signaled && outcomes[0].signal == SIGBUS) << outcomes[0].describe();
  const std::string said = testing::read_file(log);
  EXPECT_CONTAINS(said, "shardcast: SIGBUS reading checkpoint file '");
  EXPECT_CONTAINS(said, "/ckpt/model-");
  EXPECT_CONTAINS(said, "the file is shorter than when it was mapped");
}

}  // namespace
}  // namespace shardcast
