#include "tests/support/forked_sessions.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "coordinator/torch_dtype.h"
#include "launch/communicator.h"
#include "shm/segment.h"

namespace shardcast::testing::forked {

namespace fs = std::filesystem;

std::string digest_of(const StateDict& state) {
  std::string text;
  for (const auto& item : state) {
    const at::Tensor t = item.value().to(at::kCPU).contiguous();
    TensorSpec spec{item.key(), *from_scalar_type(t.scalar_type()), t.sizes().vec()};
    text += digest_line(spec, t.data_ptr(), t.nbytes()) + "\n";
  }
  return text;
}

std::string expected_digest(const fs::path& checkpoint) {
  std::string text;
  for (const std::string& line : digest_checkpoint(open_catalog(checkpoint))) text += line + "\n";
  return text;
}

std::string test_job() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "." + info->name();
  return "t" + std::to_string(getpid()) + "-" + std::to_string(std::hash<std::string>()(name) % 100000);
}

std::vector<std::string> shardcast_segments() {
  const std::string prefix = std::string(shm::kNamePrefix) + test_job() + "-";
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator("/dev/shm")) {
    std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) names.push_back(name);
  }
  return names;
}

std::vector<RankOutcome> with_sessions(const TempDir& dir, int ranks, const std::function<void(Session&, int)>& fn,
                                       std::chrono::seconds deadline, int ranks_per_node) {
  const std::string job = test_job();
  return run_ranks(
      ranks,
      [&](int rank) {
        setenv("SHARDCAST_JOB_ID", job.c_str(), 1);
        if (ranks_per_node > 0) setenv("SHARDCAST_RANKS_PER_NODE", std::to_string(ranks_per_node).c_str(), 1);
        Session session(make_file_store_communicator(dir / "store", rank, ranks), std::chrono::seconds(30));
        fn(session, rank);
      },
      deadline);
}

void expect_all_succeeded(const std::vector<RankOutcome>& outcomes) {
  for (size_t r = 0; r < outcomes.size(); ++r) EXPECT_EQ(outcomes[r].describe(), "exit 0") << "rank " << r;
}

void record(const TempDir& dir, int rank, const std::function<void()>& fn) {
  std::string text = "ok";
  try {
    fn();
  } catch (const Error& e) {
    text = std::to_string(static_cast<int>(e.code())) + " " + e.what();
  }
  std::ofstream(dir / ("outcome" + std::to_string(rank))) << text;
}

std::string outcome_file(const TempDir& dir, int rank) {
  return read_file(dir / ("outcome" + std::to_string(rank)));
}

std::string mapped_file(const void* address) {
  std::ifstream maps("/proc/self/maps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(address);
  for (std::string line; std::getline(maps, line);) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    in >> range >> perms >> offset >> dev >> inode;
    std::getline(in >> std::ws, path);
    const uintptr_t begin = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    const uintptr_t end = std::stoull(range.substr(range.find('-') + 1), nullptr, 16);
    if (at >= begin && at < end) return path;
  }
  return "";
}

}  // namespace shardcast::testing::forked
