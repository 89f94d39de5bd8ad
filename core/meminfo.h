// What the node's memory allows: /proc/meminfo's MemAvailable.
#pragma once

#include <cstdint>

namespace shardcast {

// MemAvailable in bytes (the kernel's estimate of memory a new workload can take without swapping); 0 if unknown.
uint64_t mem_available_bytes();

}  // namespace shardcast
