// shardcast-bench headers: time to parse a safetensors header and an index of N tensors, for growing N. Parsing must
// grow linearly: a checkpoint of 200,000 tensors is real (per-expert MoE weights), and a reader that rescans on every
// key takes minutes on it.
#pragma once

#include <string>
#include <vector>

namespace shardcast::bench {

struct HeaderBenchArgs {
  std::vector<size_t> tensors{10'000, 20'000, 40'000, 200'000};
  size_t before_up_to = 40'000;  // also time the callback parser used before, up to this many tensors
  std::string out = "headers";   // prefix of the .json and .md written
};

int run_header_bench(const HeaderBenchArgs& args);

}  // namespace shardcast::bench
