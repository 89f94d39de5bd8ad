// shardcast-bench gpu: placement cuda against the machine's own ceiling. One rank (no launcher needed): the pinned
// host-to-device bandwidth measured here, then `shardcast load --placement cuda` through rings of several sizes, with
// bytes/s as a fraction of that ceiling, the peak of node shared memory against the ring's size, and digests against
// the checkpoint's; page cache warm, then once cold for the first ring (when it can be dropped: root).
#pragma once

#include <string>
#include <vector>

namespace shardcast::bench {

struct GpuBenchArgs {
  std::string checkpoint;  // default: synthesize one of `size`
  std::string size = "4GB";
  std::vector<std::string> rings{"2x256MiB", "2x64MiB", "4x256MiB"};
  std::string out = "gpu-bench";  // prefix of the .json and .md written
  int device = 0;
};

int run_gpu(const GpuBenchArgs& args);

}  // namespace shardcast::bench
