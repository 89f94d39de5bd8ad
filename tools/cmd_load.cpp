#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (its home since fmt 11)
#include <nlohmann/json.hpp>

#include "coordinator/digest.h"
#include "coordinator/tensor_parallel.h"
#include "coordinator/torch_dtype.h"
#include "core/duration.h"
#include "core/file.h"
#include "core/size.h"
#include "launch/launch_env.h"
#include "shm/kept_copies.h"
#include "tools/cli_checks.h"
#include "tools/commands.h"
#include "tools/device_map_options.h"
#include "worker/session.h"

namespace shardcast::cli {
namespace {

struct LoadArgs {
  std::string checkpoint, placement = "shared", dtype = "keep", map_files = "auto", shm_dir, digest_out, report_out;
  std::string keep;  // --keep: a duration
  DeviceMapArgs map;
  std::vector<std::string> tensors;
  int timeout_s = 600;
  bool leader_reads_only = false;
  // placement cuda
  GpuOptions gpu;
  std::string ring = "2x256MiB";
  // tensor parallel
  int tp_size = 1;
  std::vector<std::string> tp_rules;
};

std::string expand(const std::string& pattern, int rank) {
  std::string out = pattern;
  for (size_t at; (at = out.find("{rank}")) != std::string::npos;) out.replace(at, 6, std::to_string(rank));
  return out;
}

// --digest-out / --report-out are checked while parsing, before the job is joined, so `{rank}` is this process's rank
// as its launcher states it (the communicator is held to the same number); 0 alone or when the environment is
// unusable, which Session::from_env then reports.
CLI::Validator rank_output_file() {
  return CLI::Validator(
      [](std::string& pattern) {
        int rank = 0;
        try {
          rank = std::max(detect_launch_env().rank, 0);
        } catch (const Error&) {
        }
        return output_file_problem(expand(pattern, rank));
      },
      "FILE");
}

void write_text(const std::string& path, const std::string& text) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  File file = File::create_exclusive(path);
  file.write_all(text.data(), text.size());
}

// This process's proportional share of anonymous and shared (tmpfs) memory, from /proc/self/smaps_rollup: summed over
// the ranks of a node it is what the load holds, whatever else runs on the machine.
std::map<std::string, uint64_t> proportional_memory() {
  std::map<std::string, uint64_t> out;
  std::ifstream in("/proc/self/smaps_rollup");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  std::getline(in, key);  // the "[rollup]" address line
  while (in >> key >> kb >> unit) {
    if (key == "Pss_Anon:") out["pss_anon_bytes"] = kb * 1024;
    if (key == "Pss_Shmem:") out["pss_shmem_bytes"] = kb * 1024;
    if (key == "Pss_File:") out["pss_file_bytes"] = kb * 1024;
  }
  return out;
}

uint64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;
}

// The loaded tensors' names by where their bytes came from (mapped, or staged and why).
std::map<TensorSource, std::vector<std::string>> by_source(const LoadStats& stats) {
  std::map<TensorSource, std::vector<std::string>> out;
  for (const auto& [name, source] : stats.tensor_sources) out[source].push_back(name);
  return out;
}

// What became of the node's kept copy (rank 0's node).
void print_kept(const KeptUse& kept) {
  const auto left = std::chrono::seconds(kept.expires_unix - shm::unix_now());
  switch (kept.state) {
    case KeptState::kNone: break;
    case KeptState::kReused:
      fmt::print("  reused kept copy {} (nothing staged or read); kept for {} more\n", kept.key, format_duration(left));
      break;
    case KeptState::kKept:
      fmt::print("  kept this node's copy as {} for {} (`shardcast ls`, `shardcast gc --kept`)\n", kept.key,
                 format_duration(left));
      break;
    case KeptState::kNotKept: fmt::print("  not kept: {}\n", kept.note); break;
  }
  if (kept.state != KeptState::kNotKept && !kept.note.empty()) fmt::print("  {}\n", kept.note);
}

void run_load(const LoadArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  Session session = Session::from_env(std::chrono::seconds(args.timeout_s));
  const Topology& topo = session.topology();
  LoadOptions options;
  options.placement = parse_placement(args.placement);
  options.dtype = args.dtype;
  options.map_files = parse_map_files(args.map_files);
  options.tensors = args.tensors;
  options.shm_dir = args.shm_dir;
  options.timeout = std::chrono::seconds(args.timeout_s);
  if (!args.keep.empty()) options.keep_for = parse_duration(args.keep);
  options.parallel_read = !args.leader_reads_only;
  options.gpu = args.gpu;
  const RingShape ring = parse_ring(args.ring);
  options.gpu.ring_slots = ring.slots;
  options.gpu.ring_slot_bytes = ring.slot_bytes;
  options.tp.size = args.tp_size;
  for (const std::string& rule : args.tp_rules) options.tp.rules.push_back(parse_slice_rule(rule));
  apply_device_map_options(args.map, options);
  // Progress on a terminal only (rank 0); quiet under a launcher or in logs.
  if (topo.rank == 0 && isatty(STDERR_FILENO)) {
    options.progress = [&](const std::string& step, size_t batch, size_t batches) {
      const int width = 30, done = static_cast<int>(width * (batch + (step == "materialize" ? 1 : 0)) / batches);
      fmt::print(stderr, "\r[{:#<{}}{:.<{}}] batch {}/{} {:<12}", "", done, "", width - done, batch + 1, batches, step);
    };
  }
  StateDict state = session.load(args.checkpoint, options);
  if (options.progress) fmt::print(stderr, "\r{:<70}\r", "");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const LoadStats& stats = session.last_stats();

  if (!args.digest_out.empty()) {
    std::string text;
    for (const auto& item : state) {
      const at::Tensor t = item.value().to(at::kCPU).contiguous();
      TensorSpec spec{item.key(), *from_scalar_type(t.scalar_type()), t.sizes().vec()};
      text += digest_line(spec, t.data_ptr(), t.nbytes()) + "\n";
    }
    write_text(expand(args.digest_out, topo.rank), text);
  }
  if (!args.report_out.empty()) {
    nlohmann::ordered_json report;
    report["rank"] = topo.rank;
    report["world_size"] = topo.world_size;
    report["local_rank"] = topo.local_rank;
    report["local_size"] = topo.local_size;
    report["node"] = topo.node;
    report["node_count"] = topo.node_count;
    report["job_id"] = topo.job_id;
    report["launcher"] = topo.launcher;
    report["launch_evidence"] = topo.evidence;
    report["communicator"] = topo.communicator;
    report["checkpoint"] = args.checkpoint;
    report["placement"] = args.placement;
    report["dtype"] = args.dtype;
    report["tensors"] = state.size();
    report["seconds"] = seconds;
    for (const PhaseTime& p : stats.phases) report["phases"][p.name] = p.seconds;
    report["tensor_bytes"] = stats.tensor_bytes;
    report["node_bytes_staged"] = stats.node_bytes_staged;
    report["node_bytes_mapped"] = stats.node_bytes_mapped;
    report["sources"] = nlohmann::ordered_json::object();
    for (const auto& [source, names] : by_source(stats))
      report["sources"][std::string(source_name(source))] = names.size();
    for (const auto& [name, source] : stats.tensor_sources) report["tensor_sources"][name] = source_name(source);
    report["kept"] = {{"state", kept_state_name(stats.kept.state)},
                      {"key", stats.kept.key},
                      {"expires_unix", stats.kept.expires_unix},
                      {"note", stats.kept.note}};
    report["rank_bytes_staged"] = stats.rank_bytes_staged;
    report["rank_bytes_read"] = stats.rank_bytes_read;
    if (options.placement == Placement::kCuda) {
      report["device"] = stats.device;
      report["transport"] = args.gpu.transport;
      report["transport_choice"] = stats.transport_choice;
      report["transports"] = stats.transports;
      report["ring_bytes"] = stats.ring_bytes;
      report["rank_bytes_to_device"] = stats.rank_bytes_to_device;
      report["rank_bytes_received"] = stats.rank_bytes_received;
    }
    if (options.tp.size > 1) report["tp_size"] = options.tp.size;
    if (!stats.device_map.empty()) {
      report["device_map"] = nlohmann::ordered_json::object();
      for (const auto& [prefix, device] : stats.device_map) report["device_map"][prefix] = device;
      for (const auto& [device, bytes] : stats.device_bytes) report["device_bytes"][device] = bytes;
      report["ring_bytes"] = stats.ring_bytes;
    }
    report["peak_rss_bytes"] = peak_rss_bytes();
    for (const auto& [key, bytes] : proportional_memory()) report[key] = bytes;  // measured while the tensors live
    write_text(expand(args.report_out, topo.rank), report.dump(2) + "\n");
  }
  if (topo.rank == 0) {
    if (!stats.device_map.empty()) {
      std::string where;
      for (const auto& [device, bytes] : stats.device_bytes)
        where += fmt::format(", {} on {}", format_size(bytes), device);
      fmt::print("loaded {} tensors on {} rank(s) in {:.2f} s by device_map{}; {} staged per node\n", state.size(),
                 topo.world_size, seconds, where, format_size(stats.node_bytes_staged));
    } else if (options.placement == Placement::kCuda) {
      fmt::print("loaded {} tensors on {} rank(s) in {:.2f} s: placement cuda on {}; {}; host ring {} on this node\n",
                 state.size(), topo.world_size, seconds, stats.device, stats.transport_choice,
                 format_size(stats.ring_bytes));
    } else {
      fmt::print(
          "loaded {} tensors ({}) on {} rank(s) in {:.2f} s: placement {}, {} mapped from the page cache, {} {}\n",
          state.size(), format_size(stats.tensor_bytes), topo.world_size, seconds, args.placement,
          format_size(stats.node_bytes_mapped), format_size(stats.node_bytes_staged),
          stats.kept.state == KeptState::kReused ? "from a kept copy" : "staged per node");
    }
    print_kept(stats.kept);
    // Why what was not mapped was staged, with a few names each.
    for (const auto& [source, names] : by_source(stats)) {
      if (source == TensorSource::kMapped) continue;
      const std::vector<std::string> some(names.begin(), names.begin() + std::min<size_t>(names.size(), 3));
      fmt::print("  {} tensor(s) {}: {}{}\n", names.size(), source_name(source), fmt::join(some, ", "),
                 names.size() > some.size() ? ", ..." : "");
    }
  }
}

}  // namespace

void add_load(CLI::App& app) {
  auto* cmd = app.add_subcommand("load", "Load a checkpoint as one rank of a job (mpirun) or alone");
  static LoadArgs args;
  cmd->add_option("CHECKPOINT", args.checkpoint, "checkpoint directory, index or file")->required();
  cmd->add_option("--placement", args.placement,
                  "shared (zero-copy, read-only), cow (copy-on-write), private, or cuda (each rank's GPU)")
      ->check(CLI::IsMember({"shared", "cow", "private", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--transport", args.gpu.transport,
                  "cuda: auto, h2d (each GPU copies from its node's pinned ring), nccl (rank 0 reads, NCCL "
                  "broadcasts), scatter (as nccl; slices go to their rank alone)")
      ->check(CLI::IsMember({"auto", "h2d", "nccl", "scatter"}))
      ->capture_default_str();
  cmd->add_option("--device", args.gpu.device, "cuda: device index (default: LOCAL_RANK)")
      ->check(whole_number_at_least(0));
  cmd->add_option("--ring", args.ring, "cuda: pinned node-shared ring, SLOTSxSIZE")
      ->check(ring_shape())
      ->capture_default_str();
  cmd->add_flag("--device-stand-in", args.gpu.host_stand_in,
                "cuda: host memory plays the GPU (runs the GPU path's logic on a machine without one)");
  cmd->add_option("--tp-size", args.tp_size, "tensor-parallel group size: rank r holds slice r % size")
      ->check(whole_number_at_least(1))
      ->capture_default_str();
  cmd->add_option("--tp-rule", args.tp_rules,
                  "PATTERN:DIM: split matching tensors along DIM across the TP group (e.g. '*.q_proj.weight:0')")
      ->check(parsed_by([](const std::string& rule) { parse_slice_rule(rule); }, "PATTERN:DIM"));
  cmd->add_option("--dtype", args.dtype,
                  "keep: each tensor's own; auto: config.json's torch_dtype (else the first float's); bf16, f16, f32, "
                  "f64 convert floats once per node")
      ->check(dtype_name(true))
      ->capture_default_str();
  cmd->add_option("--map-files", args.map_files,
                  "shared/cow/private: map safetensors tensors in their own dtype from the files (the page cache, "
                  "nothing staged): auto (unless on a network file system), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  add_device_map_options(*cmd, args.map);
  cmd->add_option("--tensors", args.tensors, "load only these names (a trailing * matches a prefix)");
  cmd->add_option("--shm-dir", args.shm_dir, "put segments in files in this directory instead of /dev/shm")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--timeout", args.timeout_s, "seconds each wait between ranks may take")
      ->check(whole_number_at_least(1))
      ->capture_default_str();
  cmd->add_option("--keep", args.keep,
                  "keep the node's staged copy this long after the job (10m, 1h, seconds); a later job asking for "
                  "the same bytes attaches to it and reads nothing")
      ->check(parsed_by([](const std::string& text) { parse_duration(text); }, "DURATION"));
  cmd->add_flag("--leader-reads-only", args.leader_reads_only, "only the node leader reads from storage");
  cmd->add_option("--digest-out", args.digest_out, "write this rank's digest lines here ({rank} = global rank)")
      ->check(rank_output_file());
  cmd->add_option("--report-out", args.report_out, "write this rank's JSON report here ({rank} = global rank)")
      ->check(rank_output_file());
  cmd->callback([] { run_load(args); });
}

}  // namespace shardcast::cli
