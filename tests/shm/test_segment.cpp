#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "core/error.h"
#include "shm/segment.h"
#include "tests/support/temp_dir.h"

namespace shardcast::shm {
namespace {

namespace fs = std::filesystem;

std::string unique_name(const std::string& what) {
  return std::string(kNamePrefix) + "test-" + std::to_string(getpid()) + "-" + what;
}

class SegmentOnBothBackings : public ::testing::TestWithParam<bool> {
 protected:
  Location location() const { return GetParam() ? Location{dir_.path()} : Location{}; }
  fs::path backing(const std::string& name) const { return location().filesystem() / name; }
  testing::TempDir dir_;
};

// Every entry of `dir` (names only).
std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
  return names;
}

TEST_P(SegmentOnBothBackings, CreateIsUnnamedPrivateSizedAndAttachSeesTheBytes) {
  const auto before = entries(location().filesystem());
  const uint64_t free_before = free_bytes(location());
  constexpr uint64_t kSize = 64 << 20;  // far above what tests running beside this one allocate meanwhile
  auto created = Segment::create("segment basic", kSize, 42, location());
  EXPECT_EQ(entries(location().filesystem()), before) << "a segment never has a name";
  struct stat st {};
  ASSERT_EQ(fstat(created->descriptor().fd(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kHeaderBytes + kSize);
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, kHeaderBytes + kSize) << "not allocated up front";
  EXPECT_LE(free_bytes(location()) + kSize, free_before + kSize / 4) << "counted where it lives";
  std::memcpy(created->data(), "hello", 5);
  created->set_state(SegmentState::kReady);

  auto attached = Segment::attach(created->descriptor(), 42, Access::kReadOnly, "segment basic");
  EXPECT_EQ(attached->data_size(), kSize);
  EXPECT_EQ(std::memcmp(attached->data(), "hello", 5), 0);
  EXPECT_EQ(attached->state(), SegmentState::kReady);
  EXPECT_EQ(attached->header().creator_pid, getpid());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(attached->data()) % 4096, 0u);
  created.reset();
  EXPECT_EQ(std::memcmp(attached->data(), "hello", 5), 0) << "a mapping keeps the memory";
}

// The point of unnamed segments: a creator killed mid-fill leaves nothing, and its memory is back at once.
TEST_P(SegmentOnBothBackings, ACreatorKilledMidFillLeavesNothingAndFreesTheMemory) {
  const auto before = entries(location().filesystem());
  const uint64_t free_before = free_bytes(location());
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  if (child == 0) {
    auto s = Segment::create("segment killed", 128 << 20, 1, location());
    std::memset(s->data(), 1, 128 << 20);
    (void)!write(ready[1], "x", 1);
    pause();
    _exit(0);
  }
  char byte;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  // Margins of 64 MiB: tests running beside this one allocate far less meanwhile.
  EXPECT_LT(free_bytes(location()) + (64 << 20), free_before) << "the child's segment holds memory while it lives";
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  close(ready[0]);
  close(ready[1]);
  EXPECT_EQ(entries(location().filesystem()), before);
  EXPECT_GE(free_bytes(location()) + (64 << 20), free_before) << "memory back without gc";
}

// Only the creator keeps a descriptor (to hand out); a rank's mapping alone holds the memory, so a model of many
// segments costs a rank no descriptors.
TEST_P(SegmentOnBothBackings, AnAttachedSegmentHoldsNoDescriptor) {
  auto open_descriptors = [] { return std::distance(fs::directory_iterator("/proc/self/fd"), {}); };
  auto created = Segment::create("segment fds", 4096, 9, location());
  const auto before = open_descriptors();
  std::vector<std::shared_ptr<Segment>> attached;
  for (int i = 0; i < 10; ++i) attached.push_back(Segment::attach(created->descriptor(), 9, Access::kReadOnly, "s"));
  EXPECT_EQ(open_descriptors(), before);
}

TEST_P(SegmentOnBothBackings, AttachRefusesAnotherLayoutAndAnotherFile) {
  auto s = Segment::create("segment layout", 100, 7, location());
  try {
    Segment::attach(s->descriptor(), 8, Access::kReadOnly, "segment layout");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ranks disagree"), std::string::npos) << e.what();
  }
  testing::write_file(dir_ / "not-a-segment", std::string(8192, 'x'));
  try {
    Segment::attach(File::open_read(dir_ / "not-a-segment"), 7, Access::kReadOnly, "a stranger");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a stranger is not a shardcast segment"), std::string::npos) << e.what();
  }
}

TEST_P(SegmentOnBothBackings, CopyOnWriteWritesStayInTheWritingProcess) {
  auto s = Segment::create("segment cow", 4096, 3, location());
  std::memset(s->data(), 'a', 4096);
  pid_t child = fork();
  if (child == 0) {
    auto mine = Segment::attach(s->descriptor(), 3, Access::kCopyOnWrite, "segment cow");
    mine->data()[0] = 'z';
    _exit(mine->data()[0] == 'z' ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(s->data()[0], 'a');
  auto other = Segment::attach(s->descriptor(), 3, Access::kReadOnly, "segment cow");
  EXPECT_EQ(other->data()[0], 'a');
}

// Named segments of earlier versions (and of a creator that died): what `shardcast gc` removes.
void write_named_segment(const fs::path& path, pid_t creator) {
  SegmentHeader h{};
  h.magic = kSegmentMagic;
  h.version = 1;
  h.header_size = kHeaderBytes;
  h.data_size = 100;
  h.creator_pid = creator;
  h.state = static_cast<uint32_t>(SegmentState::kFilling);
  std::string bytes(kHeaderBytes + 100, '\0');
  std::memcpy(bytes.data(), &h, sizeof(h));
  testing::write_file(path, bytes);
}

TEST_P(SegmentOnBothBackings, OrphanOfADeadCreatorIsFoundAndRemoved) {
  const std::string name = unique_name("orphan");
  write_named_segment(backing(name), 4242);
  bool found = false;
  for (const Orphan& o : find_orphans(location()))
    found |= o.name == name && o.creator_pid == 4242 && o.state == "filling" && o.bytes == kHeaderBytes + 100;
  EXPECT_TRUE(found);
  remove_orphans(location());
  EXPECT_FALSE(fs::exists(backing(name)));
}

TEST_P(SegmentOnBothBackings, ANamedSegmentWhoseCreatorHoldsItsLockIsNoOrphan) {
  const std::string name = unique_name("held");
  write_named_segment(backing(name), getpid());
  const int lock = open(backing(name).c_str(), O_RDONLY);
  ASSERT_EQ(flock(lock, LOCK_SH), 0);
  for (const Orphan& o : find_orphans(location())) EXPECT_NE(o.name, name);
  close(lock);
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
}

}  // namespace
}  // namespace shardcast::shm
