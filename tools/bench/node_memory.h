// Node memory as DESIGN.md counts it: what the node cannot get back (AnonPages + Shmem from /proc/meminfo: anonymous
// memory plus tmpfs/shared memory), and reclaimable page cache (Cached - Shmem) separately, sampled while a command
// runs. (MemTotal - MemAvailable would also move with the kernel's estimate of reclaimable cache.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardcast::bench {

struct MemInfo {
  uint64_t unreclaimable = 0;  // AnonPages + Shmem
  uint64_t page_cache = 0;     // Cached - Shmem (file pages)
  uint64_t shmem = 0;
  uint64_t total = 0;  // MemTotal
};

MemInfo read_meminfo();

struct Measurement {
  double seconds = 0;
  int exit_code = -1;
  uint64_t peak_unreclaimable = 0;  // above the level before the command started
  uint64_t peak_page_cache = 0;     // above the level before
  uint64_t peak_shmem = 0;          // above the level before: shared memory alone (segments, the GPU ring)
  uint64_t samples = 0;
};

// Runs argv (no shell), sampling /proc/meminfo every `interval_ms` until it exits; output passes through.
Measurement measure_command(const std::vector<std::string>& argv, int interval_ms = 10);

// Drops the page cache (needs root; a no-op with a warning otherwise) so runs start cold and comparable. True when
// it was dropped.
bool drop_page_cache();

}  // namespace shardcast::bench
