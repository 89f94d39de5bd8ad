#include "tools/bench/gpu_bench.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "coordinator/synth.h"
#include "core/error.h"
#include "core/size.h"
#include "tools/bench/node_memory.h"
#include "worker/device.h"

namespace shardcast::bench {
namespace {

namespace fs = std::filesystem;

std::string text_of(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Reads every file once so the timed loads see the page cache, not the disk: the ceiling is PCIe, not storage.
void warm_page_cache(const fs::path& checkpoint) {
  std::vector<char> buffer(8 << 20);
  for (const auto& entry : fs::recursive_directory_iterator(checkpoint)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    while (in.read(buffer.data(), buffer.size()) || in.gcount() > 0) {
    }
  }
}

}  // namespace

int run_gpu(const GpuBenchArgs& args) {
  const std::string shardcast = (fs::canonical("/proc/self/exe").parent_path() / "shardcast").string();
  const fs::path work = fs::temp_directory_path() / fmt::format("shardcast-gpu-bench-{}", getpid());
  fs::create_directories(work);
  struct RemoveOnExit {
    fs::path dir;
    ~RemoveOnExit() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } remove_work{work};
  fs::path checkpoint = args.checkpoint;
  if (checkpoint.empty()) {
    checkpoint = work / "checkpoint";
    fmt::print("synthesizing a {} checkpoint in {}\n", args.size, checkpoint.string());
    synthesize_checkpoint(checkpoint, parse_size(args.size), 0, CheckpointFormat::kSafetensors, true);
  }
  if (measure_command({shardcast, "digest", checkpoint.string(), "--out", (work / "reference").string()}).exit_code) {
    throw Error(ErrorCode::kSystem, "shardcast digest failed");
  }
  const std::string expected = text_of(work / "reference");
  warm_page_cache(checkpoint);

  const double ceiling = pinned_h2d_bytes_per_second(args.device, 1ull << 30, 10);
  fmt::print(
      "pinned host-to-device ceiling on cuda:{}: {:.2f} GB/s (1 GiB cudaMemcpyAsync from cudaHostAlloc, "
      "median of 10)\n\n",
      args.device, ceiling / 1e9);

  nlohmann::ordered_json results;
  results["checkpoint"] = checkpoint.string();
  results["pinned_h2d_bytes_per_second"] = ceiling;
  std::string table =
      "| ring | cache | device | bytes to device | stream s | GB/s | of ceiling | peak shmem | of ring | "
      "digests |\n|---|---|---|---|---|---|---|---|---|---|\n";
  bool all_exact = true;
  auto run_ring = [&](const std::string& ring, const char* cache) {
    const fs::path report = work / "report.json", digest = work / "digest";
    const Measurement m = measure_command({shardcast, "load", checkpoint.string(), "--placement", "cuda", "--transport",
                                           "h2d", "--device", std::to_string(args.device), "--ring", ring,
                                           "--report-out", report.string(), "--digest-out", digest.string()});
    if (m.exit_code != 0) throw Error(ErrorCode::kSystem, fmt::format("shardcast load --ring {} failed", ring));
    const auto r = nlohmann::json::parse(text_of(report));
    const double stream_s = r["phases"]["stream"].get<double>();
    const uint64_t bytes = r["rank_bytes_to_device"].get<uint64_t>(), ring_bytes = r["ring_bytes"].get<uint64_t>();
    const double rate = bytes / stream_s;
    const bool exact = text_of(digest) == expected;
    all_exact &= exact;
    nlohmann::ordered_json row{{"ring", ring},
                               {"cache", cache},
                               {"device", r["device"]},
                               {"bytes_to_device", bytes},
                               {"stream_seconds", stream_s},
                               {"load_seconds", r["seconds"]},
                               {"bytes_per_second", rate},
                               {"fraction_of_ceiling", rate / ceiling},
                               {"ring_bytes", ring_bytes},
                               {"peak_shmem_bytes", m.peak_shmem},
                               {"peak_unreclaimable_bytes", m.peak_unreclaimable},
                               {"bit_exact", exact}};
    const std::string line =
        fmt::format("| {} | {} | {} | {} | {:.3f} | {:.2f} | {:.1f}% | {} | {:.3f}x | {} |\n", ring, cache,
                    r["device"].get<std::string>(), format_size(bytes), stream_s, rate / 1e9, 100 * rate / ceiling,
                    format_size(m.peak_shmem), ring_bytes ? static_cast<double>(m.peak_shmem) / ring_bytes : 0.0,
                    exact ? "equal" : "DIFFER");
    table += line;
    fmt::print("{}", line);  // as each run ends, so a later failure keeps it in the log
    std::fflush(stdout);
    results["runs"].push_back(row);
  };
  fmt::print("{}", table);
  for (const std::string& ring : args.rings) run_ring(ring, "warm");
  // Cold: every byte from storage, once for the first ring (root only: dropping the page cache needs it).
  if (!args.rings.empty() && drop_page_cache()) run_ring(args.rings.front(), "cold");
  fmt::print("\npeak shmem: node-wide Shmem above its level before the load (the ring; other work moves it too)\n");
  std::ofstream(args.out + ".json") << results.dump(2) << "\n";
  std::ofstream(args.out + ".md") << table;
  fmt::print("wrote {0}.json and {0}.md\n", args.out);
  return all_exact ? 0 : 1;
}

}  // namespace shardcast::bench
