#include "tests/support/load_job.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include "coordinator/catalog.h"
#include "coordinator/digest.h"
#include "shm/segment.h"
#include "tests/support/temp_dir.h"

namespace shardcast::testing {

namespace fs = std::filesystem;

std::vector<std::string> load_outputs(const fs::path& dir) {
  return {"--digest-out", (dir / "digest{rank}").string(), "--report-out", (dir / "report{rank}.json").string()};
}

LoadJob expect_bit_exact_job(const fs::path& dir, int ranks, const fs::path& checkpoint) {
  std::string expected;
  for (const auto& line : digest_checkpoint(open_catalog(checkpoint))) expected += line + "\n";
  LoadJob job;
  for (int rank = 0; rank < ranks; ++rank) {
    const fs::path digest = dir / ("digest" + std::to_string(rank));
    const fs::path report = dir / ("report" + std::to_string(rank) + ".json");
    if (!fs::exists(digest) || !fs::exists(report)) {
      ADD_FAILURE() << "rank " << rank << " wrote no digest or report in " << dir;
      job.reports.emplace_back();
      continue;
    }
    EXPECT_EQ(read_file(digest), expected) << "rank " << rank;
    job.reports.push_back(nlohmann::json::parse(read_file(report)));
    if (rank == 0) job.job_id = job.reports.back()["job_id"];
    EXPECT_EQ(job.reports.back()["rank"], rank);
    EXPECT_EQ(job.reports.back()["world_size"], ranks);
    job.bytes_read += job.reports.back()["rank_bytes_read"].get<uint64_t>();
  }
  return job;
}

void expect_reused_kept_copy(const LoadJob& job, const std::string& key) {
  for (size_t rank = 0; rank < job.reports.size(); ++rank) {
    const auto& report = job.reports[rank];
    EXPECT_EQ(report["kept"]["state"], "reused") << "rank " << rank;
    EXPECT_EQ(report["kept"]["key"], key) << "rank " << rank;
    EXPECT_EQ(report["rank_bytes_staged"], 0) << "rank " << rank;
  }
  EXPECT_LT(job.bytes_read, 64u << 10);
}

void expect_read_once(const LoadJob& job, uint64_t tensor_bytes, const fs::path& checkpoint) {
  uint64_t files = 0, shards = 0;
  for (const auto& e : fs::directory_iterator(checkpoint)) {
    files += e.file_size();
    shards += e.path().extension() != ".json";
  }
  // A mapped load reads the pages that are not in the page cache: the page where a shard's header ends and its data
  // begins came in with the header.
  EXPECT_GE(job.bytes_read + shards * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)), tensor_bytes);
  EXPECT_LT(job.bytes_read, files + files / 10) << "the job read some shard more than once";
}

std::vector<std::string> segments_in_dev_shm(const std::string& job_id) {
  const std::string prefix = std::string(shm::kNamePrefix) + job_id + "-";
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator("/dev/shm")) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) names.push_back(e.path().filename().string());
  }
  return names;
}

}  // namespace shardcast::testing
