// Bytes this process read from checkpoint files: the report's "bytes read from storage", summed over ranks by tests.
#pragma once

#include <cstdint>

namespace shardcast {

void count_checkpoint_read(uint64_t bytes);
uint64_t checkpoint_bytes_read();

}  // namespace shardcast
