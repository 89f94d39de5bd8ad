// Kept copies across jobs (LoadOptions::keep_for): the next job asking for the same bytes attaches bit-exact, stages
// and reads nothing, whatever its ranks, nodes and placement; a checkpoint rewritten in place or another dtype is never
// reused; virtual nodes sharing one store reuse it too, and a node without the copy gets its bytes from one that has
// it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "coordinator/synth.h"
#include "shm/kept_copies.h"
#include "tests/support/forked_sessions.h"
#include "tests/support/temp_dir.h"
#include "worker/session.h"

namespace shardcast {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using namespace testing::forked;

struct RankResult {
  std::string state, key, digest;
  uint64_t bytes_read = 0, bytes_staged = 0;
  int64_t expires = 0;
};

struct KeptJob {
  int ranks = 2;
  int ranks_per_node = 0;
  Placement placement = Placement::kShared;
  std::string dtype = "f32";
  std::chrono::seconds keep{0};
  // Each rank's segment directory (the store lives there): by default dir/shm for every rank.
  std::function<fs::path(int rank)> shm_dir;
};

// One job (forked ranks) loading dir/ckpt; each rank's kept state, digest and bytes read and staged.
std::vector<RankResult> run_job(const TempDir& dir, const KeptJob& job) {
  static int jobs = 0;
  const std::string tag = fmt::format("job{}-", jobs++);
  fs::create_directories(dir / "shm");
  auto outcomes = with_sessions(
      dir, job.ranks,
      [&](Session& session, int rank) {
        LoadOptions options;
        options.placement = job.placement;
        options.dtype = job.dtype;
        options.map_files = MapFiles::kNever;  // everything staged: everything kept
        options.shm_dir = job.shm_dir ? job.shm_dir(rank) : dir / "shm";
        options.keep_for = job.keep;
        StateDict state = session.load(dir / "ckpt", options);
        const LoadStats& s = session.last_stats();
        std::ofstream(dir / (tag + std::to_string(rank)))
            << kept_state_name(s.kept.state) << "\n"
            << (s.kept.key.empty() ? "-" : s.kept.key) << "\n"
            << s.rank_bytes_read << " " << s.rank_bytes_staged << " " << s.kept.expires_unix << "\n"
            << digest_of(state);
        if (job.placement == Placement::kCopyOnWrite) {  // stays in this rank, never reaches the kept copy
          for (auto& item : state) {
            if (item.value().is_floating_point() && item.value().numel() > 0) item.value().fill_(rank + 7);
          }
        }
      },
      std::chrono::seconds(120), job.ranks_per_node);
  expect_all_succeeded(outcomes);
  std::vector<RankResult> results;
  for (int r = 0; r < job.ranks; ++r) {
    std::istringstream in(testing::read_file(dir / (tag + std::to_string(r))));
    RankResult result;
    std::getline(in, result.state);
    std::getline(in, result.key);
    in >> result.bytes_read >> result.bytes_staged >> result.expires;
    in.ignore(1);
    result.digest.assign(std::istreambuf_iterator<char>(in), {});
    results.push_back(result);
  }
  return results;
}

// The checkpoint's digest in `dtype`, staged afresh into a store of its own (so nothing kept is reused).
std::string fresh_digest(const TempDir& dir, const std::string& dtype) {
  fs::create_directories(dir / "fresh");
  KeptJob job;
  job.ranks = 1;
  job.dtype = dtype;
  job.shm_dir = [&](int) { return dir / "fresh"; };
  const auto results = run_job(dir, job);
  EXPECT_EQ(results[0].state, "none");
  EXPECT_TRUE(fs::is_empty(dir / "fresh")) << "a load without keep_for keeps nothing";
  return results[0].digest;
}

// The store the jobs of a test keep their copies in (dir/shm), its copies, and removing them all.
shm::KeptStore store_of(const TempDir& dir) {
  return shm::KeptStore(shm::Location{dir / "shm"});
}
std::vector<shm::KeptCopyInfo> kept_in(const TempDir& dir) {
  return store_of(dir).list(shm::unix_now());
}
void remove_kept(const TempDir& dir) {
  store_of(dir).collect(shm::unix_now(), true);
}

// Headers and the index: what rank 0 still reads when the tensors come from a kept copy.
constexpr uint64_t kCatalogBytes = 64 << 10;

TEST(KeptLoad, TheNextJobReusesTheCopyBitExactWithOtherRanksAndPlacementReadingNothing) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 900'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = fresh_digest(dir, "f32");

  KeptJob first;
  first.keep = std::chrono::seconds(60);
  const auto kept = run_job(dir, first);
  for (const RankResult& r : kept) {
    EXPECT_EQ(r.state, "kept");
    EXPECT_EQ(r.digest, expected);
    EXPECT_EQ(r.key, kept[0].key) << "every rank of the node names the copy";
  }

  KeptJob cow;  // another number of ranks, copy-on-write, no keep time of its own
  cow.ranks = 3;
  cow.placement = Placement::kCopyOnWrite;
  for (const RankResult& r : run_job(dir, cow)) {
    EXPECT_EQ(r.state, "reused");
    EXPECT_EQ(r.key, kept[0].key);
    EXPECT_EQ(r.digest, expected);
    EXPECT_EQ(r.bytes_staged, 0u);
    EXPECT_LT(r.bytes_read, kCatalogBytes);
  }

  sleep(1);
  KeptJob again;  // after the cow ranks wrote to their views: the copy is as it was; the keep time moves on
  again.ranks = 1;
  again.keep = std::chrono::seconds(60);
  const auto reused = run_job(dir, again);
  EXPECT_EQ(reused[0].state, "reused");
  EXPECT_EQ(reused[0].digest, expected);
  EXPECT_GT(reused[0].expires, kept[0].expires);

  const auto copies = kept_in(dir);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].name, kept[0].key);
  EXPECT_EQ(copies[0].manifest.expires_unix, reused[0].expires);
  EXPECT_EQ(copies[0].users, 0) << "the jobs have ended";
  EXPECT_EQ(store_of(dir).collect(shm::unix_now(), true).size(), 1u);
  EXPECT_TRUE(fs::is_empty(dir / "shm"));
}

TEST(KeptLoad, AShardRewrittenInPlaceWithItsSizeAndMtimeKeptIsNeverReused) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 700'000, CheckpointFormat::kSafetensors, true);
  KeptJob job;
  job.keep = std::chrono::seconds(60);
  const auto before = run_job(dir, job);
  ASSERT_EQ(before[0].state, "kept");

  // Change the last bytes of the first shard (tensor data) in place, then put its mtime back: size, inode and mtime
  // are as before; only ctime (and the bytes) tell.
  const fs::path shard = dir / "ckpt" / "model-00001-of-00003.safetensors";
  struct stat st {};
  ASSERT_EQ(::stat(shard.c_str(), &st), 0);
  {
    std::fstream file(shard, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(st.st_size - 16);
    file.write("\x3f\x80\x00\x00\x3f\x80\x00\x00\x3f\x80\x00\x00\x3f\x80\x00\x00", 16);
  }
  const timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
  struct stat after {};
  ASSERT_EQ(::stat(shard.c_str(), &after), 0);
  ASSERT_EQ(after.st_size, st.st_size);
  ASSERT_EQ(after.st_mtim.tv_nsec, st.st_mtim.tv_nsec);

  const auto rewritten = run_job(dir, job);
  EXPECT_EQ(rewritten[0].state, "kept") << "staged anew, not reused";
  EXPECT_NE(rewritten[0].key, before[0].key);
  EXPECT_NE(rewritten[0].digest, before[0].digest);
  EXPECT_EQ(rewritten[0].digest, fresh_digest(dir, "f32"));
  EXPECT_EQ(kept_in(dir).size(), 2u) << "the old copy stays until it expires, unused";
  remove_kept(dir);
}

TEST(KeptLoad, AnotherDtypeIsAnotherCopy) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 700'000, CheckpointFormat::kSafetensors, true);
  KeptJob f32;
  f32.keep = std::chrono::seconds(60);
  const auto first = run_job(dir, f32);
  KeptJob f16 = f32;
  f16.dtype = "f16";
  const auto second = run_job(dir, f16);
  EXPECT_EQ(second[0].state, "kept");
  EXPECT_NE(second[0].key, first[0].key);
  EXPECT_EQ(second[0].digest, fresh_digest(dir, "f16"));
  const auto third = run_job(dir, f32);
  EXPECT_EQ(third[0].state, "reused");
  EXPECT_EQ(third[0].key, first[0].key);
  EXPECT_EQ(kept_in(dir).size(), 2u);
  remove_kept(dir);
}

TEST(KeptLoad, AnUnusableCopyIsNeverAttachedAndTheNextKeepReplacesIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 2'000'000, 700'000, CheckpointFormat::kSafetensors, true);
  KeptJob job;
  job.keep = std::chrono::seconds(60);
  const auto first = run_job(dir, job);
  const fs::path copy = store_of(dir).dir() / first[0].key;
  fs::permissions(copy / "s0", fs::perms::others_read, fs::perm_options::add);  // open to others: refused

  const auto second = run_job(dir, job);
  EXPECT_EQ(second[0].state, "kept") << "staged anew and kept under the same key";
  EXPECT_EQ(second[0].key, first[0].key);
  EXPECT_GT(second[0].bytes_staged, 0u);
  EXPECT_EQ(second[0].digest, first[0].digest);
  EXPECT_EQ(fs::status(copy / "s0").permissions() & fs::perms::others_read, fs::perms::none) << "replaced";

  const auto third = run_job(dir, job);
  EXPECT_EQ(third[0].state, "reused");
  EXPECT_EQ(third[0].digest, first[0].digest);
  remove_kept(dir);
}

TEST(KeptLoad, NodesReuseTheirCopiesAndANodeWithoutOneReceivesFromOneThatHasIt) {
  TempDir dir;
  synthesize_checkpoint(dir / "ckpt", 3'000'000, 900'000, CheckpointFormat::kSafetensors, true);
  const std::string expected = fresh_digest(dir, "f32");
  KeptJob job;
  job.ranks = 4;
  job.ranks_per_node = 2;
  job.keep = std::chrono::seconds(60);
  // Two virtual nodes share this host's store: one keeps the copy, the other does not wait for its own job.
  const auto first = run_job(dir, job);
  std::set<std::string> states;
  for (const RankResult& r : first) {
    EXPECT_EQ(r.digest, expected);
    states.insert(r.state);
  }
  EXPECT_EQ(states, (std::set<std::string>{"kept", "not kept"}));

  const auto second = run_job(dir, job);  // both nodes reuse it: nothing read, nothing exchanged
  uint64_t read = 0;
  for (const RankResult& r : second) {
    EXPECT_EQ(r.state, "reused");
    EXPECT_EQ(r.digest, expected);
    EXPECT_EQ(r.bytes_staged, 0u);
    read += r.bytes_read;
  }
  EXPECT_LT(read, kCatalogBytes);

  // Node 1 looks in a store of its own, which is empty: it stages its share and receives node 0's from its copy.
  fs::create_directories(dir / "shm-node1");
  job.keep = std::chrono::seconds(0);
  job.shm_dir = [&](int rank) { return rank < 2 ? dir / "shm" : dir / "shm-node1"; };
  const auto mixed = run_job(dir, job);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(mixed[r].state, r < 2 ? "reused" : "none") << "rank " << r;
    EXPECT_EQ(mixed[r].digest, expected) << "rank " << r;
  }
  EXPECT_EQ(mixed[0].bytes_staged + mixed[1].bytes_staged, 0u);
  EXPECT_GT(mixed[2].bytes_staged + mixed[3].bytes_staged, 0u);
  EXPECT_TRUE(fs::is_empty(dir / "shm-node1"));
  remove_kept(dir);
}

}  // namespace
}  // namespace shardcast
