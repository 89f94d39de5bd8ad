#include "core/io_stats.h"

#include <atomic>

namespace shardcast {
namespace {
std::atomic<uint64_t> g_bytes_read{0};
}

void count_checkpoint_read(uint64_t bytes) {
  g_bytes_read.fetch_add(bytes, std::memory_order_relaxed);
}
uint64_t checkpoint_bytes_read() {
  return g_bytes_read.load(std::memory_order_relaxed);
}

}  // namespace shardcast
