#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "core/error.h"
#include "shm/segment.h"
#include "tests/support/temp_dir.h"

namespace shardcast::shm {
namespace {

namespace fs = std::filesystem;

std::string unique_name(const std::string& what) {
  return std::string(kNamePrefix) + "test-" + std::to_string(getpid()) + "-" + what;
}

bool in_dev_shm(const std::string& name) {
  return fs::exists(fs::path("/dev/shm") / name);
}

class SegmentOnBothBackings : public ::testing::TestWithParam<bool> {
 protected:
  Location location() const { return GetParam() ? Location{dir_.path()} : Location{}; }
  fs::path backing(const std::string& name) const { return location().filesystem() / name; }
  testing::TempDir dir_;
};

TEST_P(SegmentOnBothBackings, CreateIsPrivateSizedAndAttachSeesTheBytes) {
  const std::string name = unique_name("basic");
  auto created = Segment::create(name, 10000, 42, location());
  struct stat st {};
  ASSERT_EQ(stat(backing(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kHeaderBytes + 10000);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, kHeaderBytes + 10000) << "not allocated up front";
  std::memcpy(created->data(), "hello", 5);
  created->set_state(SegmentState::kReady);

  auto attached = Segment::attach(name, 42, Access::kReadOnly, location());
  EXPECT_EQ(attached->data_size(), 10000u);
  EXPECT_EQ(std::memcmp(attached->data(), "hello", 5), 0);
  EXPECT_EQ(attached->state(), SegmentState::kReady);
  EXPECT_EQ(attached->header().creator_pid, getpid());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(attached->data()) % 4096, 0u);

  created->release_name();
  EXPECT_FALSE(fs::exists(backing(name)));
  EXPECT_EQ(std::memcmp(attached->data(), "hello", 5), 0) << "mappings outlive the name";
}

TEST_P(SegmentOnBothBackings, CreatorRemovesTheNameWhenDroppedBeforeRelease) {
  const std::string name = unique_name("scope");
  { auto s = Segment::create(name, 100, 1, location()); }
  EXPECT_FALSE(fs::exists(backing(name)));
}

TEST_P(SegmentOnBothBackings, AttachRefusesAnotherLayout) {
  const std::string name = unique_name("layout");
  auto s = Segment::create(name, 100, 7, location());
  try {
    Segment::attach(name, 8, Access::kReadOnly, location());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ranks disagree"), std::string::npos) << e.what();
  }
}

TEST_P(SegmentOnBothBackings, CopyOnWriteWritesStayInTheWritingProcess) {
  const std::string name = unique_name("cow");
  auto s = Segment::create(name, 4096, 3, location());
  std::memset(s->data(), 'a', 4096);
  pid_t child = fork();
  if (child == 0) {
    auto mine = Segment::attach(name, 3, Access::kCopyOnWrite, location());
    mine->data()[0] = 'z';
    _exit(mine->data()[0] == 'z' ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(s->data()[0], 'a');
  auto other = Segment::attach(name, 3, Access::kReadOnly, location());
  EXPECT_EQ(other->data()[0], 'a');
}

TEST_P(SegmentOnBothBackings, OrphanOfADeadCreatorIsFoundAndRemoved) {
  const std::string name = unique_name("orphan");
  pid_t child = fork();
  if (child == 0) {
    auto s = Segment::create(name, 100, 1, location());
    _exit(0);  // dies without running destructors: the name leaks, as after a crash
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(fs::exists(backing(name)));
  bool found = false;
  for (const Orphan& o : find_orphans(location()))
    found |= o.name == name && o.creator_pid == child && o.state == "filling";
  EXPECT_TRUE(found);
  remove_orphans(location());
  EXPECT_FALSE(fs::exists(backing(name)));
}

// A creator holds no lock for a moment after creating the name (its segment is still empty then): a sweep by another
// job in that moment must not take it for an orphan. Left empty for minutes, it is one.
TEST_P(SegmentOnBothBackings, AnEmptyJustCreatedSegmentIsNotAnOrphanUntilItIsOld) {
  const std::string name = unique_name("being-created");
  testing::write_file(backing(name), "");
  auto listed = [&] {
    for (const Orphan& o : find_orphans(location())) {
      if (o.name == name) return true;
    }
    return false;
  };
  EXPECT_FALSE(listed());
  fs::last_write_time(backing(name), fs::file_time_type::clock::now() - std::chrono::minutes(2));
  EXPECT_TRUE(listed());
  remove_orphans(location());
  EXPECT_FALSE(fs::exists(backing(name)));
}

TEST_P(SegmentOnBothBackings, CreateReplacesAnOrphanButNotALiveSegment) {
  const std::string name = unique_name("reuse");
  auto live = Segment::create(name, 100, 1, location());
  EXPECT_THROW(Segment::create(name, 100, 1, location()), Error);
  live.reset();
  pid_t child = fork();
  if (child == 0) {
    auto s = Segment::create(name, 100, 1, location());
    _exit(0);
  }
  waitpid(child, nullptr, 0);
  auto fresh = Segment::create(name, 200, 2, location());
  EXPECT_EQ(fresh->data_size(), 200u);
}

INSTANTIATE_TEST_SUITE_P(Backings, SegmentOnBothBackings, ::testing::Values(false, true), [](const auto& info) {
  return info.param ? std::string("FileBacked") : std::string("DevShm");
});

TEST(Segment, TooLittleSharedMemoryNamesBothNumbersAndTheFix) {
  try {
    check_free_space(Location{}, 1ull << 50, "checkpoint 'x'");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.code(), ErrorCode::kSystem);
    EXPECT_NE(m.find("need 1.13 PB (1125899906842624 bytes)"), std::string::npos) << m;
    EXPECT_NE(m.find("/dev/shm has"), std::string::npos) << m;
    EXPECT_NE(m.find("--shm-size"), std::string::npos) << m;
    EXPECT_NE(m.find("--shm-dir"), std::string::npos) << m;
  }
}

TEST(Segment, TestsLeaveNothingInDevShm) {
  for (const auto& entry : fs::directory_iterator("/dev/shm")) {
    EXPECT_EQ(entry.path().filename().string().rfind(unique_name(""), 0), std::string::npos) << entry.path();
  }
  EXPECT_FALSE(in_dev_shm(unique_name("basic")));
}

}  // namespace
}  // namespace shardcast::shm
