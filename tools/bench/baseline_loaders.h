// What training jobs do today, as the benchmark's baselines. Each rank builds its model (random init), then:
//  naive: reads every shard into private memory (the whole state dict, as torch.load does) and copies it in;
//  mmap:  maps each safetensors file (shared page cache) and copies from the mapping (what safetensors users do).
#pragma once

#include <filesystem>
#include <string>

namespace shardcast::bench {

// Loads and returns the seconds it took (model build included). Bytes read from the checkpoint's files (headers
// included) add to checkpoint_bytes_read() (core/io_stats.h), as shardcast's own reads do.
double load_naive(const std::filesystem::path& checkpoint);
double load_mmap(const std::filesystem::path& checkpoint);

}  // namespace shardcast::bench
