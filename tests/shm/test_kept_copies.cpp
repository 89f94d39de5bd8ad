// The kept-copy store: a copy published under a key is found with its bytes, private to its user, never when expired
// or changed, removed by collect() when expired or orphaned, and one key is decided by one process at a time.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "core/error.h"
#include "shm/kept_copies.h"
#include "tests/support/temp_dir.h"

namespace shardcast::shm {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr char kKey[] = "0123456789abcdef0123456789abcdef";

struct Fixture {
  testing::TempDir dir;
  Location location{dir.path()};
  KeptStore store{location};
  std::vector<std::shared_ptr<Segment>> segments;

  // Segments 1 and 3 of a plan, filled with a pattern and ready, as a load leaves them.
  std::vector<KeptSegment> stage() {
    std::vector<KeptSegment> expected;
    for (uint32_t index : {1u, 3u}) {
      auto segment = Segment::create("test segment", 10000 + index, 0xabc0 + index, location);
      for (uint64_t i = 0; i < segment->data_size(); ++i) segment->data()[i] = static_cast<uint8_t>(i * index);
      segment->set_state(SegmentState::kReady);
      segments.push_back(segment);
      expected.push_back({index, 10000 + index, 0xabc0 + index});
    }
    return expected;
  }

  void publish(int64_t expires) {
    std::string why;
    auto lock = store.lock(kKey, milliseconds(0), "job-a", &why);
    ASSERT_TRUE(lock) << why;
    std::vector<File> files;
    std::vector<std::pair<uint32_t, int>> named;
    for (size_t k = 0; k < segments.size(); ++k) {
      files.push_back(segments[k]->descriptor());
      named.emplace_back(k == 0 ? 1 : 3, files.back().fd());
    }
    store.publish(*lock, {kKey, "/ckpt", "2 tensors", {1, 3}, 20004, unix_now(), expires, 600}, named);
  }
};

TEST(KeptStore, APublishedCopyIsFoundWithItsBytesInAPrivateDirectory) {
  Fixture f;
  const auto expected = f.stage();
  f.publish(unix_now() + 600);
  f.segments.clear();  // the job ended: only the names hold the memory now

  struct stat st {};
  ASSERT_EQ(::stat(f.store.dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((f.store.dir() / kKey / "s3").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  std::string why;
  auto lock = f.store.lock(kKey, milliseconds(0), "job-b", &why);
  ASSERT_TRUE(lock) << why;
  auto copy = f.store.find(kKey, expected, unix_now(), &why);
  ASSERT_TRUE(copy) << why;
  EXPECT_EQ(copy->manifest.checkpoint, "/ckpt");
  ASSERT_EQ(copy->files.size(), 2u);
  auto segment = Segment::attach(std::move(copy->files[1]), 0xabc3, Access::kReadOnly, "kept s3");
  bool same = true;
  for (uint64_t i = 0; i < segment->data_size(); ++i) same &= segment->data()[i] == static_cast<uint8_t>(i * 3);
  EXPECT_TRUE(same);

  // ls: one copy, the memory it holds, and this process as its one user while it maps it.
  const auto listed = f.store.list(unix_now());
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].name, kKey);
  EXPECT_TRUE(listed[0].problem.empty()) << listed[0].problem;
  EXPECT_GE(listed[0].allocated, 20004u);
  EXPECT_EQ(listed[0].users, 1);
}

TEST(KeptStore, AnExpiredOrDifferentCopyIsNeverFoundAndSaysWhy) {
  Fixture f;
  auto expected = f.stage();
  f.publish(unix_now() + 600);
  std::string why;
  auto lock = f.store.lock(kKey, milliseconds(0), "job-b", &why);
  ASSERT_TRUE(lock);
  EXPECT_FALSE(f.store.find(kKey, expected, unix_now() + 601, &why));
  EXPECT_NE(why.find("expired"), std::string::npos) << why;
  expected[1].layout_hash ^= 1;  // another layout of segment 3
  EXPECT_FALSE(f.store.find(kKey, expected, unix_now(), &why));
  EXPECT_NE(why.find("s3"), std::string::npos) << why;
  expected.pop_back();
  EXPECT_FALSE(f.store.find(kKey, expected, unix_now(), &why));
  EXPECT_NE(why.find("holds 2 segments"), std::string::npos) << why;
}

TEST(KeptStore, ACopyOthersCouldUseIsRefused) {
  Fixture f;
  const auto expected = f.stage();
  f.publish(unix_now() + 600);
  ASSERT_EQ(::chmod((f.store.dir() / kKey / "s1").c_str(), 0644), 0);
  std::string why;
  auto lock = f.store.lock(kKey, milliseconds(0), "job-b", &why);
  ASSERT_TRUE(lock);
  EXPECT_FALSE(f.store.find(kKey, expected, unix_now(), &why));
  EXPECT_NE(why.find("mode 644"), std::string::npos) << why;
  lock.reset();

  ASSERT_EQ(::chmod(f.store.dir().c_str(), 0755), 0);
  try {
    f.store.lock(kKey, milliseconds(0), "job-b", &why);
    ADD_FAILURE() << "a store others can enter was used";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kSystem);
    EXPECT_NE(std::string(e.what()).find(f.store.dir().string()), std::string::npos) << e.what();
  }
  if (geteuid() == 0) {  // a directory of another user under our name (root can make one): never used
    ASSERT_EQ(::chmod(f.store.dir().c_str(), 0700), 0);
    ASSERT_EQ(::chown(f.store.dir().c_str(), 65534, 65534), 0);
    EXPECT_THROW(f.store.lock(kKey, milliseconds(0), "job-b", &why), Error);
    EXPECT_THROW(f.store.list(unix_now()), Error);
    ASSERT_EQ(::chown(f.store.dir().c_str(), 0, 0), 0);
  }
}

TEST(KeptStore, OneProcessDecidesAKeyAtATimeAndANodeOfTheSameJobIsNotWaitedFor) {
  Fixture f;
  std::string why;
  auto held = f.store.lock(kKey, milliseconds(0), "job-a", &why);
  ASSERT_TRUE(held) << why;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(f.store.lock(kKey, milliseconds(300), "job-b", &why));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(300));
  EXPECT_NE(why.find(std::to_string(getpid())), std::string::npos) << why;
  const auto again = std::chrono::steady_clock::now();
  EXPECT_FALSE(f.store.lock(kKey, milliseconds(5000), "job-a", &why));
  EXPECT_LT(std::chrono::steady_clock::now() - again, milliseconds(1000));
  EXPECT_NE(why.find("of this job"), std::string::npos) << why;
  held.reset();
  EXPECT_TRUE(f.store.lock(kKey, milliseconds(0), "job-b", &why));
}

TEST(KeptStore, CollectRemovesExpiredAndOrphanedCopiesAndLeavesNothingBehind) {
  Fixture f;
  f.stage();
  f.publish(unix_now() + 600);
  f.segments.clear();
  fs::create_directories(f.store.dir() / (std::string(kKey) + ".publish-999999"));           // a publisher that died
  std::ofstream(f.store.dir() / "fedcba9876543210fedcba9876543210.lock") << "999999 job-x";  // a keeper that died

  auto removed = f.store.collect(unix_now(), false);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0].problem, "left while being published");
  ASSERT_EQ(f.store.list(unix_now()).size(), 1u);  // the copy has not expired

  removed = f.store.collect(unix_now() + 601, false);
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_TRUE(removed[0].expired);
  EXPECT_TRUE(fs::is_empty(f.dir.path())) << "the store and its lock files go with the last copy";
}

TEST(KeptStore, CollectAllLeavesACopyWhoseLockAJobHolds) {
  Fixture f;
  f.stage();
  f.publish(unix_now() + 600);
  std::string why;
  {
    auto held = f.store.lock(kKey, milliseconds(0), "job-b", &why);
    ASSERT_TRUE(held);
    EXPECT_TRUE(f.store.collect(unix_now(), true).empty());
  }
  EXPECT_EQ(f.store.collect(unix_now(), true).size(), 1u);
  EXPECT_TRUE(f.store.list(unix_now()).empty());
}

}  // namespace
}  // namespace shardcast::shm
