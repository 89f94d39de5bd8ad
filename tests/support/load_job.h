// Checks on what the ranks of a `shardcast load --digest-out DIR/digest{rank} --report-out DIR/report{rank}.json` job
// left behind, whatever launched it (mpirun, shardcast-run, a torchrun-style environment, SLURM).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace shardcast::testing {

// The `--digest-out` / `--report-out` arguments that make each rank write into dir.
std::vector<std::string> load_outputs(const std::filesystem::path& dir);

struct LoadJob {
  std::vector<nlohmann::json> reports;  // by global rank
  uint64_t bytes_read = 0;              // summed over the ranks: what the job asked storage for
  std::string job_id;                   // rank 0's report's: names the job's segments
};

// Expects (gtest) every rank's digest to equal the checkpoint's, and returns the reports.
LoadJob expect_bit_exact_job(const std::filesystem::path& dir, int ranks, const std::filesystem::path& checkpoint);

// Expects the job to have read every tensor byte once: at least `tensor_bytes` (less a page per shard, which a mapped
// load finds in the page cache after the header read), and less than one more shard would add (the files plus 10%:
// the catalog's reads of headers and pickles are far smaller). Evict the checkpoint (evict_page_cache) before the job:
// a mapped load reads only what the page cache lacks.
void expect_read_once(const LoadJob& job, uint64_t tensor_bytes, const std::filesystem::path& checkpoint);

// Expects every rank to have attached to its node's kept copy `key`: nothing staged, and nothing read but rank 0's
// index and headers (under 64 KiB in all).
void expect_reused_kept_copy(const LoadJob& job, const std::string& key);

// The job's segments in /dev/shm (there should be none once it has ended). Only this job's: other jobs (a parallel
// test run, a user's load) may hold segments of their own meanwhile.
std::vector<std::string> segments_in_dev_shm(const std::string& job_id);

}  // namespace shardcast::testing
